#!/usr/bin/env python3
"""A forced asset delete held in the gateway's undo window, with the official SDK unchanged.

Usage: sdk_deferred.py
  The forced delete must return normally (the gateway answers 202 Accepted), and the asset must
  still be there right after (it is only deleted once the delay passes uncancelled).

Environment: TL_BASE_URL (with /v1.3), TL_API_KEY, TL_ASSET.
Exits non-zero with a reason on the first failure.
"""

import os
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


def main():
    os.environ.pop("TWELVELABS_BASE_URL", None)
    from twelvelabs import TwelveLabs
    from twelvelabs.core.api_error import ApiError

    client = TwelveLabs(api_key=env("TL_API_KEY"), base_url=env("TL_BASE_URL"))
    asset = env("TL_ASSET")
    try:
        client.assets.delete(asset, force=True, request_options={"max_retries": 0})
    except ApiError as e:
        fail(f"the deferred forced delete raised HTTP {e.status_code} body={e.body!r}")
    print("ok   forced delete returned normally (deferred)")
    try:
        client.assets.retrieve(asset, request_options={"max_retries": 0})
    except ApiError as e:
        fail(f"the asset is gone right after a deferred delete: HTTP {e.status_code}")
    print(f"ok   {asset} still exists during the undo window")


if __name__ == "__main__":
    main()
