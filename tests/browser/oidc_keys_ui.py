#!/usr/bin/env python3
"""End-to-end check of signing in with the team's identity provider and of the Keys tab, in a
real headless Chromium, against a gateway with `ui.oidc` pointing at a real OpenID Connect provider
(tests/oidc/provider.js: alice is in tl-admins, bob in tl-members) and the two-person policy for
forced deletes:

  python3 tests/browser/oidc_keys_ui.py --gateway http://127.0.0.1:PORT \
      --admin-key K1 --member-key K2 --screenshot docs/keys-tab.png

1. alice signs in with the provider; on the Keys tab she creates a client, issues it a key (shown
   once, with a copy button and the SDK line); the official SDK lists assets with it; she revokes
   it (confirmed) and the SDK gets 401 key_revoked.
2. A member (by key) asks for a forced delete; alice approves it on the page; it goes through.
3. alice creates bob's client and a key; bob signs in with the provider and rotates his key.

The last line on success is "keys UI: all checks passed".
"""

import argparse
import os
import sys
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from approvals_ui import (  # noqa: E402  (the shared helpers of the approvals page test)
    CHROMIUM_ARGS,
    check_problems,
    expect_approval_required,
    forced_delete,
    http,
    log,
    pick_assets,
)


def sdk_list_assets(gw, key):
    """The official SDK with `key`: 'OK n' or 'REFUSED status code'."""
    from twelvelabs import TwelveLabs

    try:
        assets = list(TwelveLabs(api_key=key, base_url=gw + "/v1.3").assets.list())
        return f"OK {len(assets)}"
    except Exception as e:  # the SDK's ApiError
        body = getattr(e, "body", None)
        code = body.get("code") if isinstance(body, dict) else None
        return f"REFUSED {getattr(e, 'status_code', '')} {code}"


def new_page(browser, gw, problems, secrets):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(15_000)

    def on_console(msg):
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            problems.append(f"CSP violation in the console: {text}")
        elif msg.type == "error" and not text.startswith("Failed to load resource"):
            problems.append(f"console error: {text}")
        if any(k and k in text for k in secrets):
            problems.append("a key appeared in the console")

    def on_dialog(dialog):
        # Every destructive action asks first; the test says yes.
        if dialog.type != "confirm":
            problems.append(f"a {dialog.type} dialog opened: {dialog.message!r}")
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("console", on_console)
    page.on("pageerror", lambda err: problems.append(f"uncaught page error: {err}"))
    page.on("dialog", on_dialog)
    return ctx, page


def provider_sign_in(page, gw, login):
    from playwright.sync_api import expect

    resp = page.goto(gw + "/tl-gateway/ui/")
    assert resp is not None and resp.status == 200, "GET /tl-gateway/ui/"
    link = page.get_by_test_id("sso-sign-in")
    expect(link).to_be_visible()
    # With ui.oidc and without ui.allow_key_sign_in, the page asks for no key.
    expect(page.get_by_test_id("key-input")).to_be_hidden()
    link.click()
    # The provider's development login form (any login, any password).
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any-password")
    page.locator("button[type=submit]").first.click()
    page.wait_for_url(gw + "/tl-gateway/ui/**")
    expect(page.get_by_test_id("whoami")).to_contain_text("@example.com")


def assert_nothing_stored(ctx, page, secrets):
    assert page.evaluate("localStorage.length") == 0, "the page wrote to localStorage"
    assert page.evaluate("sessionStorage.length") == 0, "a session needs nothing in sessionStorage"
    for s in secrets:
        assert s not in page.url, "a secret appears in the URL"
    session = [c for c in ctx.cookies() if c["name"] == "tlgw_session"]
    assert len(session) == 1, f"no session cookie: {ctx.cookies()}"
    c = session[0]
    assert c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/tl-gateway/", c
    assert page.evaluate("document.cookie") == "", "the session cookie is readable by script"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--admin-key", required=True, help="a configured admin's key (API set-up only)")
    ap.add_argument("--member-key", required=True, help="a configured member's key (asks for approval)")
    ap.add_argument("--screenshot", required=True, help="where to write the Keys tab's PNG")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    gw = args.gateway.rstrip("/")
    member_key = args.member_key

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    problems = []
    secrets = [args.admin_key, member_key]
    shot = os.path.abspath(args.screenshot)
    os.makedirs(os.path.dirname(shot) or ".", exist_ok=True)
    client = f"svc-{uuid.uuid4().hex[:8]}"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            # 1. The admin signs in with the provider.
            ctx, page = new_page(browser, gw, problems, secrets)
            ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw)
            provider_sign_in(page, gw, "alice")
            expect(page.get_by_test_id("whoami")).to_contain_text("alice@example.com")
            expect(page.get_by_test_id("whoami")).to_contain_text("admin")
            assert_nothing_stored(ctx, page, secrets)
            log("alice signed in with the provider: HttpOnly SameSite=Strict session cookie, nothing in storage")

            # Keys tab: create a client, issue a key.
            page.get_by_test_id("tab-keys").click()
            expect(page.get_by_test_id("clients-table")).to_be_visible()
            page.get_by_test_id("new-client-id").fill(client)
            page.get_by_test_id("new-client-roles").fill("member")
            page.get_by_test_id("create-client").click()
            row = page.locator(f"tr.client-row[data-client='{client}']")
            expect(row).to_be_visible()
            row.get_by_test_id("issue-key").click()
            box = page.get_by_test_id("new-key")
            expect(box).to_be_visible()
            key = page.get_by_test_id("new-key-value").inner_text().strip()
            assert key.startswith("tlgw_"), f"not a key: {key!r}"
            sdk_line = page.get_by_test_id("new-key-sdk").inner_text()
            assert f'api_key="{key}"' in sdk_line and f'base_url="{gw}/v1.3"' in sdk_line, sdk_line
            page.get_by_test_id("new-key-copy").click()
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == key, "the copy button did not copy the key"
            expect(page.locator(f"tr.key-row[data-client='{client}']")).to_have_count(1)
            page.screenshot(path=shot, full_page=True)
            log(f"client {client} created, key issued and shown once with the SDK line; screenshot {shot}")
            assert key not in page.url
            assert page.evaluate("localStorage.length") == 0

            result = sdk_list_assets(gw, key)
            assert result.startswith("OK "), f"the SDK with the issued key: {result}"
            log(f"the official SDK with the new key: {result}")

            page.get_by_test_id("new-key-done").click()
            expect(box).to_be_hidden()
            key_row = page.locator(f"tr.key-row[data-client='{client}']")
            key_row.get_by_test_id("revoke-key").click()  # confirmed in on_dialog
            expect(key_row.get_by_test_id("key-state")).to_have_text("revoked")
            result = sdk_list_assets(gw, key)
            assert result == "REFUSED 401 key_revoked", f"the SDK with the revoked key: {result}"
            log("revoked on the page; the SDK gets 401 key_revoked")

            # Disable the client (confirmed).
            page.locator(f"tr.client-row[data-client='{client}']").get_by_test_id("disable-client").click()
            expect(page.locator(f"tr.client-row[data-client='{client}']")).to_contain_text("disabled")
            log("client disabled on the page")

            # 2. A member's forced delete, approved by the signed-in admin.
            (asset_id, _), _ = pick_assets(gw, member_key)
            apr = expect_approval_required(forced_delete(gw, member_key, asset_id), "the member's forced delete")
            page.get_by_test_id("tab-pending").click()
            approval = page.get_by_test_id(f"approval-{apr}")
            expect(approval).to_be_visible()
            approval.click()
            expect(page.get_by_test_id("approve")).to_be_visible()
            page.get_by_test_id("approve").click()
            expect(page.get_by_test_id("detail").get_by_test_id("state").first).to_have_text("approved")
            r = forced_delete(gw, member_key, asset_id)
            assert r.status == 200, f"the approved forced delete: {r!r}"
            log(f"approval {apr} approved by alice signed in with the provider; the delete went through")

            # The member's client and a key (set up by the admin on the page).
            page.get_by_test_id("tab-keys").click()
            page.get_by_test_id("new-client-id").fill("bob+tl@example.com")
            page.get_by_test_id("new-client-roles").fill("member")
            page.get_by_test_id("create-client").click()
            bob_row = page.locator("tr.client-row").filter(has_text="bob+tl@example.com")
            expect(bob_row).to_be_visible()
            bob_row.get_by_test_id("issue-key").click()
            expect(page.get_by_test_id("new-key")).to_be_visible()
            bob_key = page.get_by_test_id("new-key-value").inner_text().strip()
            page.get_by_test_id("new-key-done").click()

            page.get_by_test_id("sign-out").click()
            expect(page.get_by_test_id("sso-sign-in")).to_be_visible()
            # The page ends the session with POST logout as it signs out; the cookie is worth
            # nothing afterwards (polled: the sign-out call runs beside the page's reset).
            for _ in range(50):
                r = page.evaluate("fetch('../v1/me', {credentials: 'same-origin'}).then(r => r.status)")
                if r == 401:
                    break
                page.wait_for_timeout(100)
            assert r == 401, f"after signing out the session still answers: {r}"
            ctx.close()
            log("alice signed out: the server-side session is gone")

            # 3. The member signs in and rotates their key.
            ctx, page = new_page(browser, gw, problems, secrets + [bob_key])
            provider_sign_in(page, gw, "bob")
            expect(page.get_by_test_id("whoami")).to_contain_text("bob+tl@example.com")
            page.get_by_test_id("tab-keys").click()
            mine = page.get_by_test_id("my-keys-table")
            expect(mine).to_be_visible()
            expect(page.get_by_test_id("clients-table")).to_be_hidden()
            expect(mine.get_by_test_id("rotate-key")).to_have_count(1)
            mine.get_by_test_id("rotate-key").click()  # confirmed
            expect(page.get_by_test_id("new-key")).to_be_visible()
            new_key = page.get_by_test_id("new-key-value").inner_text().strip()
            assert new_key.startswith("tlgw_") and new_key != bob_key
            expect(mine.locator("tr")).to_have_count(3)  # header + old (retiring) + new
            r = http(gw, "GET", "/tl-gateway/v1/me", new_key)
            assert r.status == 200 and r.json.get("client") == "bob+tl@example.com", f"the rotated key: {r!r}"
            log("bob signed in with the provider and rotated his key; the new key works")
            ctx.close()
            check_problems(problems, "keys UI")
        finally:
            browser.close()

    print("keys UI: all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL keys UI: {e}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=3, file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        print(f"FAIL keys UI: unexpected {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=5, file=sys.stderr)
        sys.exit(1)
