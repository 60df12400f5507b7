#!/usr/bin/env python3
"""End-to-end check of the page's Scheduled tab (deferred calls) in a real headless Chromium.

Runs against an already-running gateway whose policy defers an admin's forced asset delete (a
`defer` rule with a delay of minutes) and which has already scheduled one, `--deferred ID`:

  python3 tests/browser/deferred_ui.py --gateway http://127.0.0.1:PORT \
      --admin-key K1 --deferred dfr_... --chromium /usr/bin/chromium

The admin signs in, opens the Scheduled tab, sees the call with a countdown that counts down,
and cancels it with its Cancel button; the row goes away and the API says `cancelled`. Any
dialog, uncaught page error, console error or Content-Security-Policy violation fails the test.
The last line on success is "deferred UI: all checks passed".
"""

import argparse
import json
import sys
import time
import traceback
import urllib.request

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


def log(msg):
    print(f"ok   {msg}", flush=True)


def api(base, path, key):
    req = urllib.request.Request(
        base.rstrip("/") + "/tl-gateway/v1/" + path,
        headers={"x-api-key": key, "accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def seconds_left(text):
    """'in 14 min 05 s' -> 845; 'in 9 s' -> 9."""
    words = text.removeprefix("in ").split()
    total, unit = 0, {"h": 3600, "min": 60, "s": 1}
    for value, name in zip(words[::2], words[1::2]):
        total += int(value) * unit[name]
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--deferred", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(10_000)

        def on_console(msg):
            if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
                problems.append(f"CSP violation: {msg.text}")
            elif msg.type == "error" and not msg.text.startswith("Failed to load resource"):
                problems.append(f"console error: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda err: problems.append(f"uncaught page error: {err}"))
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message!r}"), d.dismiss()))
        page.goto(args.gateway.rstrip("/") + "/tl-gateway/ui/")
        page.get_by_test_id("key-input").fill(args.admin_key)
        page.get_by_test_id("sign-in").click()
        expect(page.get_by_test_id("whoami")).to_contain_text("alice")
        log("signed in as the admin")

        page.get_by_test_id("tab-scheduled").click()
        row = page.locator(f'[data-testid="scheduled-row"][data-id="{args.deferred}"]')
        expect(row).to_be_visible()
        expect(row).to_contain_text("DELETE /v1.3/assets/")
        expect(row).to_contain_text("force=true")
        expect(page.locator("#panel-pending")).to_be_hidden()
        clock = row.get_by_test_id("countdown")
        first = clock.text_content()
        assert first.startswith("in "), f"no countdown: {first!r}"
        time.sleep(2.2)
        second = clock.text_content()
        assert seconds_left(second) < seconds_left(first), f"the countdown did not move: {first!r} then {second!r}"
        log(f"the Scheduled tab shows the call counting down ({first} -> {second})")

        row.get_by_test_id("cancel-deferred").click()
        expect(row).to_have_count(0)
        expect(page.get_by_test_id("notice")).to_contain_text("Cancelled")
        state = api(args.gateway, f"deferred/{args.deferred}", args.admin_key)["state"]
        assert state == "cancelled", f"after Cancel the API says {state!r}"
        log("Cancel removed it; the API says cancelled")

        # The tabs work from the keyboard: from the last approvals tab the right arrow is Scheduled.
        page.get_by_test_id("tab-audit").click()
        expect(page.locator("#panel-scheduled")).to_be_hidden()
        page.get_by_test_id("tab-audit").press("ArrowRight")
        expect(page.get_by_test_id("tab-scheduled")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#panel-scheduled")).to_be_visible()
        expect(page.get_by_test_id("tab-scheduled")).to_be_focused()
        log("the arrow keys reach the Scheduled tab")

        # Back to the approvals tab: the scheduled panel steps aside.
        page.get_by_test_id("tab-pending").click()
        expect(page.locator("#panel-scheduled")).to_be_hidden()
        expect(page.locator("#panel-pending")).to_be_visible()
        assert not problems, "; ".join(problems)
        browser.close()
    print("deferred UI: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one line for the Rust test's report
        traceback.print_exc()
        print(f"FAIL deferred UI: {e}", file=sys.stderr)
        sys.exit(1)
