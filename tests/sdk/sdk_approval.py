#!/usr/bin/env python3
"""A forced asset delete that needs a second person's approval, with the official SDK unchanged.

Usage: sdk_approval.py MODE
  ask        the forced delete must raise the SDK's ApiError: HTTP 403, body code
             "approval_required", the approval id in the message and in the
             x-tl-gateway-approval-id header; sending it again must give the same id.
             Prints "APPROVAL_ID=<id>".
  succeed    the forced delete must succeed, and the asset must then be gone (404).
  ask-again  the forced delete must raise approval_required with an id other than
             TL_PREVIOUS_APPROVAL (the approval was used up). Prints "APPROVAL_ID=<id>".

Environment: TL_BASE_URL (with /v1.3), TL_API_KEY, TL_ASSET, and TL_PREVIOUS_APPROVAL for ask-again.
Exits non-zero with a reason on the first failure.
"""

import os
import re
import sys


def fail(message):
    print(f"FAIL {message}", file=sys.stderr)
    sys.exit(1)


def env(name):
    value = os.environ.get(name, "").strip()
    if not value:
        print(f"FAIL config: {name} is required", file=sys.stderr)
        sys.exit(2)
    return value


def approval_required(client, asset):
    """The forced delete, which must be refused with approval_required; returns the id."""
    from twelvelabs.core.api_error import ApiError

    try:
        client.assets.delete(asset, force=True, request_options={"max_retries": 0})
    except ApiError as e:
        body = e.body if isinstance(e.body, dict) else {}
        if e.status_code != 403 or body.get("code") != "approval_required":
            fail(f"expected 403 approval_required, got HTTP {e.status_code} body={e.body!r}")
        headers = {k.lower(): v for k, v in (e.headers or {}).items()}
        approval_id = headers.get("x-tl-gateway-approval-id", "")
        if not re.fullmatch(r"apr_[0-9a-f]{16}", approval_id):
            fail(f"no approval id in the x-tl-gateway-approval-id header: {e.headers!r}")
        message = body.get("message", "")
        if approval_id not in message or "tl-gateway approvals approve" not in message:
            fail(f"the message does not name the id and the command: {message!r}")
        return approval_id, message
    fail("the forced delete succeeded without an approval")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    os.environ.pop("TWELVELABS_BASE_URL", None)
    from twelvelabs import TwelveLabs
    from twelvelabs.core.api_error import ApiError

    client = TwelveLabs(api_key=env("TL_API_KEY"), base_url=env("TL_BASE_URL"))
    asset = env("TL_ASSET")
    if mode == "ask":
        first, message = approval_required(client, asset)
        print(f"ok   forced delete -> 403 approval_required: {message}")
        again, _ = approval_required(client, asset)
        if again != first:
            fail(f"the identical request got another approval ({again} after {first})")
        print(f"ok   the identical request again -> the same approval {first}")
        print(f"APPROVAL_ID={first}")
    elif mode == "succeed":
        client.assets.delete(asset, force=True, request_options={"max_retries": 0})
        try:
            client.assets.retrieve(asset, request_options={"max_retries": 0})
            fail("the asset is still there after the approved forced delete")
        except ApiError as e:
            if e.status_code != 404:
                fail(f"retrieve after delete: expected 404, got {e.status_code}")
        print(f"ok   the approved forced delete went through; {asset} is gone")
    elif mode == "ask-again":
        previous = env("TL_PREVIOUS_APPROVAL")
        fresh, _ = approval_required(client, asset)
        if fresh == previous:
            fail(f"the used approval {previous} was offered again")
        print(f"ok   a second retry needs a new approval: {fresh}")
        print(f"APPROVAL_ID={fresh}")
    else:
        print("usage: sdk_approval.py ask|succeed|ask-again", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
