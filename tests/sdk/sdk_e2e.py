#!/usr/bin/env python3
"""End-to-end check with the official TwelveLabs Python SDK (twelvelabs==1.3.6).

Environment:
  TL_BASE_URL          base URL including /v1.3, e.g. http://127.0.0.1:8080/v1.3
  TL_API_KEY           the key to send as x-api-key
  TL_REFERENCED_ASSET  an asset id that indexed assets reference (a plain delete must get 409)
  TL_EXPECT_FORCE      optional: "allow" (force delete must succeed) or "deny" (it must get
                       HTTP 403 with body code "policy_denied"); unset skips the force step

Prints one line per step and exits non-zero with a reason on the first failure.
"""

import os
import sys
import tempfile
import traceback

STEP_OK = "ok  "
STEP_FAIL = "FAIL"


class StepFailed(Exception):
    pass


def env(name, required=True):
    value = os.environ.get(name, "").strip()
    if required and not value:
        print(f"{STEP_FAIL} config: environment variable {name} is required", file=sys.stderr)
        sys.exit(2)
    return value


def check(cond, message):
    if not cond:
        raise StepFailed(message)


def run_step(name, fn):
    try:
        detail = fn()
    except StepFailed as e:
        print(f"{STEP_FAIL} {name}: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # SDK errors, pydantic validation errors, connection errors
        print(f"{STEP_FAIL} {name}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc(limit=3, file=sys.stderr)
        sys.exit(1)
    print(f"{STEP_OK} {name}" + (f": {detail}" if detail else ""), flush=True)
    return detail


def expect_api_error(fn, status, what):
    """Calls fn, which must raise the SDK's ApiError with `status`; returns the error."""
    from twelvelabs.core.api_error import ApiError

    try:
        fn()
    except ApiError as e:
        check(e.status_code == status, f"{what}: expected HTTP {status}, got {e.status_code} body={e.body!r}")
        return e
    raise StepFailed(f"{what}: expected HTTP {status}, but the call succeeded")


def main():
    base_url = env("TL_BASE_URL")
    api_key = env("TL_API_KEY")
    referenced = env("TL_REFERENCED_ASSET")
    expect_force = env("TL_EXPECT_FORCE", required=False).lower()
    if expect_force not in ("", "allow", "deny"):
        print(f"{STEP_FAIL} config: TL_EXPECT_FORCE must be allow, deny or unset", file=sys.stderr)
        sys.exit(2)
    # The SDK lets TWELVELABS_BASE_URL override base_url=; make sure TL_BASE_URL wins.
    os.environ.pop("TWELVELABS_BASE_URL", None)

    from twelvelabs import TwelveLabs

    client = TwelveLabs(api_key=api_key, base_url=base_url)
    no_retry = {"max_retries": 0}
    state = {}

    def list_assets():
        seen = []
        for asset in client.assets.list(page_limit=2, request_options=no_retry):
            check(asset.id, f"listed asset without _id: {asset!r}")
            seen.append(asset.id)
        check(len(seen) == len(set(seen)), "the same asset appeared on two pages")
        check(referenced in seen, f"referenced asset {referenced} not in the listing")
        return f"{len(seen)} assets over all pages"

    def upload():
        data = os.urandom(64 * 1024)
        with tempfile.NamedTemporaryFile(suffix=".mp4", delete=False) as tmp:
            tmp.write(data)
            path = tmp.name
        try:
            with open(path, "rb") as fh:
                asset = client.assets.create(
                    method="direct", file=fh, filename="sdk-e2e.mp4", request_options=no_retry
                )
        finally:
            os.unlink(path)
        check(asset.id, f"created asset has no _id: {asset!r}")
        check(asset.filename == "sdk-e2e.mp4", f"unexpected filename {asset.filename!r}")
        state["uploaded"] = asset.id
        state["size"] = len(data)
        return f"asset {asset.id} ({len(data)} bytes, status {asset.status})"

    def retrieve():
        asset = client.assets.retrieve(state["uploaded"], request_options=no_retry)
        check(asset.id == state["uploaded"], f"retrieved id {asset.id!r} != {state['uploaded']!r}")
        check(asset.size in (None, state["size"]), f"size {asset.size} != uploaded {state['size']}")
        return f"{asset.filename} {asset.file_type} size={asset.size} created_at={asset.created_at}"

    def indexed_by_asset():
        items = list(client.indexes.indexed_assets.list_by_asset(referenced, page_limit=1, request_options=no_retry))
        check(items, f"no indexed assets reference {referenced}; TL_REFERENCED_ASSET must be referenced")
        for it in items:
            check(it.id and it.index and it.index.id, f"indexed asset summary lacks _id or index._id: {it!r}")
        names = ", ".join(f"{it.id} in {it.index.name or it.index.id}" for it in items)
        none = list(client.indexes.indexed_assets.list_by_asset(state["uploaded"], request_options=no_retry))
        check(not none, f"the fresh upload is unexpectedly referenced: {none!r}")
        return f"{len(items)} referencing {referenced}: {names}"

    def entities_by_asset():
        items = list(client.entity_collections.entities.list_by_asset(referenced, request_options=no_retry))
        for it in items:
            check(it.id and referenced in (it.asset_ids or []), f"entity does not list the asset: {it!r}")
        return f"{len(items)} entities linked to {referenced}"

    def delete_uploaded():
        client.assets.delete(state["uploaded"], request_options=no_retry)
        expect_api_error(
            lambda: client.assets.retrieve(state["uploaded"], request_options=no_retry),
            404,
            "retrieve after delete",
        )
        return f"deleted {state['uploaded']}; retrieve now 404"

    def delete_referenced_plain():
        err = expect_api_error(
            lambda: client.assets.delete(referenced, request_options=no_retry), 409, "plain delete of referenced asset"
        )
        body = err.body if isinstance(err.body, dict) else {}
        check(body.get("code") and body.get("message"), f"409 body lacks code/message: {err.body!r}")
        client.assets.retrieve(referenced, request_options=no_retry)
        return f"409 {body.get('code')}: {body.get('message')}"

    def force_allowed():
        client.assets.delete(referenced, force=True, request_options=no_retry)
        expect_api_error(
            lambda: client.assets.retrieve(referenced, request_options=no_retry), 404, "retrieve after force delete"
        )
        return f"force-deleted {referenced}"

    def force_denied():
        err = expect_api_error(
            lambda: client.assets.delete(referenced, force=True, request_options=no_retry), 403, "force delete"
        )
        body = err.body if isinstance(err.body, dict) else {}
        check(body.get("code") == "policy_denied", f"expected code policy_denied, got {err.body!r}")
        client.assets.retrieve(referenced, request_options=no_retry)
        return f"403 policy_denied: {body.get('message')}"

    run_step("list assets (all pages)", list_assets)
    run_step("upload (direct)", upload)
    run_step("retrieve uploaded asset", retrieve)
    run_step("indexed assets by asset", indexed_by_asset)
    run_step("entities by asset", entities_by_asset)
    run_step("plain delete of unreferenced asset", delete_uploaded)
    run_step("plain delete of referenced asset -> 409", delete_referenced_plain)
    if expect_force == "allow":
        run_step("force delete of referenced asset -> allowed", force_allowed)
    elif expect_force == "deny":
        run_step("force delete of referenced asset -> 403 policy_denied", force_denied)
    else:
        print("skip force delete (TL_EXPECT_FORCE unset)")
    print("all SDK steps passed")


if __name__ == "__main__":
    main()
