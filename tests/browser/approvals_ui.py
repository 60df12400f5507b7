#!/usr/bin/env python3
"""End-to-end check of the approvals page (/tl-gateway/ui/) in a real headless Chromium.

Runs against an already-running gateway (in front of an emulator with seeded data) whose policy
requires an admin's approval for a forced asset delete by members and admins:

  python3 tests/browser/approvals_ui.py --gateway http://127.0.0.1:PORT \
      --admin-key K1 --member-key K2 --screenshot docs/approvals-ui.png

Needs the `playwright` Python package (sync API) and the system Chromium at /usr/bin/chromium
(no browser download). Prints one line per step and exits non-zero with a reason on the first
failure; the last line on success is "approvals UI: all checks passed".
"""

import argparse
import json
import os
import sys
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

XSS = "<img src=x onerror=alert(1)>"
COMMENT = f"looks fine {XSS}"
STORAGE_KEY = "tlgw.key"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def log(msg):
    print(f"ok   {msg}", flush=True)


# ---------- plain HTTP (stdlib) ----------


class Resp:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def code(self):
        return self.json.get("code") if isinstance(self.json, dict) else None

    def message(self):
        return self.json.get("message") if isinstance(self.json, dict) else None

    def __repr__(self):
        return f"HTTP {self.status} {self.raw[:300]!r}"


def http(base, method, path, key, body=None, headers=None, timeout=30):
    url = base.rstrip("/") + path
    data = None
    hdrs = {"accept": "application/json"}
    if key is not None:
        hdrs["x-api-key"] = key
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["content-type"] = "application/json"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, r.headers, r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read().decode("utf-8", "replace"))


def pick_assets(gw, key):
    r = http(gw, "GET", "/v1.3/assets?page_limit=50", key)
    assert r.status == 200, f"GET /v1.3/assets as the member: expected 200, got {r!r}"
    data = (r.json or {}).get("data")
    assert isinstance(data, list) and data, f"GET /v1.3/assets returned no assets: {r!r}"
    assets = []
    for a in data:
        aid = a.get("_id") or a.get("id")
        if aid:
            assets.append((aid, str(a.get("filename") or "")))
    assert assets, f"no asset in GET /v1.3/assets has an _id: {r!r}"
    keynote = [a for a in assets if "keynote" in a[1].lower()]
    first = keynote[0] if keynote else assets[0]
    others = [a for a in assets if a[0] != first[0]]
    return first, (others[0] if others else None)


def forced_delete(gw, key, asset_id):
    path = f"/v1.3/assets/{urllib.parse.quote(asset_id)}?force=true"
    rid = f"ui-test-{uuid.uuid4().hex[:16]}"
    return http(gw, "DELETE", path, key, headers={"x-request-id": rid})


def expect_approval_required(r, what):
    assert r.status == 403, f"{what}: expected 403 approval_required, got {r!r}"
    assert r.code() == "approval_required", f"{what}: expected code approval_required, got {r!r}"
    apr = r.headers.get("x-tl-gateway-approval-id")
    assert apr, f"{what}: no x-tl-gateway-approval-id header (headers: {dict(r.headers)})"
    assert apr in (r.message() or ""), f"{what}: approval id {apr} not in the message {r.message()!r}"
    return apr


# ---------- browser helpers ----------


def make_page(browser, gw, problems, secrets):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(10_000)

    def on_console(msg):
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            problems.append(f"CSP violation in the console: {text}")
        elif msg.type == "error" and not text.startswith("Failed to load resource"):
            # (a refused API call is logged by Chromium as "Failed to load resource": expected)
            problems.append(f"console error: {text}")
        if any(k and k in text for k in secrets):
            problems.append("a personal key appeared in the console")

    def on_dialog(dialog):
        problems.append(f"a {dialog.type} dialog opened: {dialog.message!r} (script injection?)")
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda err: problems.append(f"uncaught page error: {err}"))
    page.on("dialog", on_dialog)

    resp = page.goto(gw.rstrip("/") + "/tl-gateway/ui/")
    assert resp is not None and resp.status == 200, (
        f"GET /tl-gateway/ui/: expected 200, got {resp.status if resp else 'no response'}"
    )
    csp = resp.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'self'" in csp, (
        f"GET /tl-gateway/ui/ lacks the expected Content-Security-Policy, got {csp!r}"
    )
    return ctx, page


def sign_in(page, key):
    page.get_by_test_id("key-input").fill(key)
    page.get_by_test_id("sign-in").click()


def check_problems(problems, where):
    assert not problems, f"{where}: " + "; ".join(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--admin-key", required=True, help="personal key of a client with the admin role")
    ap.add_argument("--member-key", required=True, help="personal key of a client without it")
    ap.add_argument("--screenshot", required=True, help="where to write a full-page PNG")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = ap.parse_args()
    gw = args.gateway.rstrip("/")
    admin_key, member_key = args.admin_key, args.member_key

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=10_000)

    # Who the keys are (the page must say the same).
    r = http(gw, "GET", "/tl-gateway/v1/me", admin_key)
    assert r.status == 200, f"GET /tl-gateway/v1/me as the admin: {r!r}"
    admin_me = r.json
    assert admin_me.get("can_read_audit") is True, f"the admin key cannot read the audit: {admin_me}"
    r = http(gw, "GET", "/tl-gateway/v1/me", member_key)
    assert r.status == 200, f"GET /tl-gateway/v1/me as the member: {r!r}"
    member_me = r.json
    admin_name, member_name = str(admin_me["client"]), str(member_me["client"])
    wrong = http(gw, "GET", "/tl-gateway/v1/me", "not-a-valid-key-" + uuid.uuid4().hex)
    assert wrong.status == 401 and wrong.message(), f"GET me with a wrong key: expected 401, got {wrong!r}"
    log(f"keys: admin {admin_name}, member {member_name}")

    # 1. An asset to delete.
    (asset_id, filename), other = pick_assets(gw, member_key)
    log(f"asset to delete: {asset_id} ({filename})")

    # 2. The member's forced delete needs approval.
    r = forced_delete(gw, member_key, asset_id)
    apr = expect_approval_required(r, "the member's forced delete")
    log(f"member's forced delete: 403 approval_required, approval {apr}")

    # 3. The admin's own forced delete of another asset (self-approval check).
    own_apr = None
    if other is not None:
        r = forced_delete(gw, admin_key, other[0])
        own_apr = expect_approval_required(r, "the admin's own forced delete")
        log(f"admin's own forced delete of {other[0]}: approval {own_apr}")
    else:
        log("only one asset: self-approval check skipped")

    detail = http(gw, "GET", f"/tl-gateway/v1/approvals/{apr}", admin_key)
    assert detail.status == 200, f"GET approvals/{apr} as the admin: {detail!r}"
    references = detail.json.get("references")

    problems = []
    shot = os.path.abspath(args.screenshot)
    os.makedirs(os.path.dirname(shot) or ".", exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            # The member's view: a Cancel button for their own request, no Approve, no audit tab.
            mctx, mpage = make_page(browser, gw, problems, (admin_key, member_key))
            sign_in(mpage, member_key)
            expect(mpage.get_by_test_id("whoami")).to_contain_text(member_name)
            mrow = mpage.get_by_test_id(f"approval-{apr}")
            expect(mrow).to_be_visible()
            mrow.click()
            expect(mpage.get_by_test_id("detail")).to_contain_text(apr)
            expect(mpage.get_by_test_id("cancel")).to_be_visible()
            expect(mpage.get_by_test_id("approve")).to_be_hidden()
            expect(mpage.get_by_test_id("deny")).to_be_hidden()
            if member_me.get("can_read_audit") is not True:
                expect(mpage.get_by_test_id("tab-audit")).to_be_hidden()
            mctx.close()
            check_problems(problems, "member view")
            log("member sees their request with Cancel, without Approve/Deny")

            # 5. The admin signs in.
            ctx, page = make_page(browser, gw, problems, (admin_key, member_key))
            expect(page.get_by_test_id("key-input")).to_be_visible()
            sign_in(page, admin_key)
            expect(page.get_by_test_id("whoami")).to_contain_text(admin_name)
            assert page.evaluate(f"sessionStorage.getItem('{STORAGE_KEY}')") == admin_key, (
                "the key is not in sessionStorage after signing in"
            )
            assert page.evaluate("localStorage.length") == 0, "the page wrote to localStorage"
            assert ctx.cookies() == [], f"the page set cookies: {ctx.cookies()}"
            assert admin_key not in page.url, "the key appears in the URL"
            log(f"signed in as {admin_name}")

            # 3. Self-approval: no Approve button on the admin's own request (or a 403 if there is).
            if own_apr:
                own_row = page.get_by_test_id(f"approval-{own_apr}")
                expect(own_row).to_be_visible()
                own_row.click()
                expect(page.get_by_test_id("detail")).to_contain_text(own_apr)
                expect(page.get_by_test_id("cancel")).to_be_visible()
                approve = page.get_by_test_id("approve")
                if approve.is_visible():
                    approve.click()
                    expect(page.get_by_test_id("alert")).to_contain_text("403")
                    log("own request: Approve shown, clicking it shows the gateway's 403")
                else:
                    log("own request: no Approve button (can_decide false)")
                # Tidy up through the page's Cancel button (the requester's own action).
                page.get_by_test_id("cancel").click()
                expect(page.get_by_test_id("detail").get_by_test_id("state").first).to_have_text("cancelled")
                expect(page.get_by_test_id("cancel")).to_be_hidden()
                expect(page.get_by_test_id(f"approval-{own_apr}")).to_have_count(0)
                log(f"own request {own_apr} cancelled with the Cancel button")

            # 5. The member's request in the pending list, with its blast radius.
            pending = page.get_by_test_id("pending-list")
            row = page.get_by_test_id(f"approval-{apr}")
            expect(row).to_be_visible()
            expect(row).to_contain_text(member_name)
            expect(row).to_contain_text(asset_id)
            expect(row).to_contain_text("created")
            expect(row).to_contain_text("expires in")
            assert pending.get_by_role("button").count() >= 1, "the pending list has no row buttons"
            row.focus()
            page.keyboard.press("Enter")  # a row opens from the keyboard too
            panel = page.get_by_test_id("detail")
            expect(panel).to_contain_text(apr)
            expect(panel).to_contain_text(member_name)
            if detail.json.get("message"):
                expect(panel).to_contain_text(str(detail.json["message"]))
            refs = page.get_by_test_id("references")
            expect(refs).to_be_visible()
            if references is None:
                expect(refs).to_contain_text("no lookup")
            else:
                assets = references.get("indexed_assets") or []
                entities = references.get("entities") or []
                if not assets and not entities:
                    expect(refs).to_contain_text("no references")
                else:
                    n = refs.locator("li").count()
                    assert n == len(assets) + len(entities), (
                        f"references list shows {n} items, the API has {len(assets)} + {len(entities)}"
                    )
                for ia in assets:
                    expect(refs).to_contain_text(str(ia.get("index_name") or ia.get("index_id")))
                for en in entities:
                    expect(refs).to_contain_text(str(en.get("collection_id")))
                if references.get("complete") is False:
                    expect(refs).to_contain_text("lookup incomplete")
            log(f"detail of {apr} shows the blast radius ({refs.locator('li').count()} references)")

            # 6. Approve with a comment that would be an injection if rendered as HTML.
            expect(page.get_by_test_id("approve")).to_be_visible()
            expect(page.get_by_test_id("deny")).to_be_visible()
            # 10. The screenshot: a pending approval's detail with its blast radius.
            page.screenshot(path=shot, full_page=True)
            log(f"screenshot written to {shot}")
            page.get_by_test_id("comment").fill(COMMENT)
            # The lists refresh every 3 s; an open detail and a half-written comment survive that.
            page.wait_for_timeout(3_500)
            expect(panel).to_be_visible()
            expect(panel).to_contain_text(apr)
            expect(page.get_by_test_id("comment")).to_have_value(COMMENT)
            page.get_by_test_id("approve").click()
            expect(panel.get_by_test_id("state").first).to_have_text("approved")
            expect(page.get_by_test_id("approve")).to_be_hidden()
            expect(page.get_by_test_id("alert")).to_be_empty()
            log(f"approved {apr} in the browser")

            # 7. The member re-sends: it goes through once, and the approval cannot be reused.
            r = forced_delete(gw, member_key, asset_id)
            assert r.status == 200, f"the approved forced delete: expected 200, got {r!r}"
            log("member's re-sent delete: 200")
            r = forced_delete(gw, member_key, asset_id)
            new_apr = expect_approval_required(r, "a second re-send after the approval was used")
            assert new_apr != apr, f"a used approval was offered again: {new_apr}"
            c = http(gw, "POST", f"/tl-gateway/v1/approvals/{new_apr}/cancel", member_key, body={})
            assert c.status == 200, f"cancel {new_apr} as the member: {c!r}"
            assert (c.json or {}).get("state") == "cancelled", f"cancel {new_apr}: state is not cancelled: {c!r}"
            log(f"second re-send: 403 with a new approval {new_apr}, cancelled by the member")

            # 8. The decided tab: used, who decided, the comment as text.
            page.get_by_test_id("tab-decided").click()
            expect(page.get_by_test_id("tab-decided")).to_have_attribute("aria-selected", "true")
            decided = page.get_by_test_id("decided-list")
            item = decided.locator(f"[data-testid='decided-{apr}']")
            expect(item.get_by_test_id("state")).to_have_text("used", timeout=10_000)
            expect(item).to_contain_text(admin_name)
            expect(item).to_contain_text(COMMENT)
            assert XSS in decided.inner_text(), "the decided tab does not show the comment's literal text"
            assert page.locator("img[src=x]").count() == 0, "the comment was rendered as HTML (img[src=x])"
            for cancelled in [new_apr] + ([own_apr] if own_apr else []):
                expect(decided.locator(f"[data-testid='decided-{cancelled}']").get_by_test_id("state")).to_have_text(
                    "cancelled"
                )
            log("decided tab: used, decided by the admin, comment shown as text")

            # 9. The audit tab shows the delete.
            tab_audit = page.get_by_test_id("tab-audit")
            expect(tab_audit).to_be_visible()
            tab_audit.click()
            table = page.get_by_test_id("audit-table")
            expect(table).to_be_visible()
            expect(table).to_contain_text(asset_id, timeout=10_000)
            expect(table).to_contain_text(member_name)
            log("recent destructive calls tab lists the delete")

            # Tabs work from the keyboard: ArrowLeft moves the selection back.
            tab_audit.focus()
            page.keyboard.press("ArrowLeft")
            expect(page.get_by_test_id("tab-decided")).to_have_attribute("aria-selected", "true")

            # 11. Sign out, then a wrong key.
            page.get_by_test_id("sign-out").click()
            expect(page.get_by_test_id("key-input")).to_be_visible()
            assert page.evaluate(f"sessionStorage.getItem('{STORAGE_KEY}')") is None, (
                "the key is still in sessionStorage after signing out"
            )
            expect(page.get_by_test_id("whoami")).to_be_hidden()
            log("signed out: key removed, sign-in form shown")
            sign_in(page, "not-a-valid-key-" + uuid.uuid4().hex)
            expect(page.get_by_test_id("alert")).to_contain_text(wrong.message())
            assert page.evaluate(f"sessionStorage.getItem('{STORAGE_KEY}')") is None, (
                "a refused key was kept in sessionStorage"
            )
            expect(page.get_by_test_id("key-input")).to_be_visible()
            log("a wrong key shows the gateway's 401 message")

            ctx.close()
            check_problems(problems, "admin view")
        finally:
            browser.close()

    print("approvals UI: all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL approvals UI: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as e:  # Playwright timeouts, connection errors
        print(f"FAIL approvals UI: unexpected {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=5, file=sys.stderr)
        sys.exit(1)
