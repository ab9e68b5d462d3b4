#!/usr/bin/env python3
"""Drive Drover's gRPC admin API from Python: a tenant, a key, a call with it, its revocation.

Environment:
  DROVER_GRPC         admin API address, host:port (e.g. 127.0.0.1:50051)
  DROVER_ADMIN_TOKEN  the admin token
  DROVER_DATAPLANE    a data plane's base URL (e.g. http://127.0.0.1:8080)

Needs `grpcio` and `grpcio-status` and the stubs generated from proto/proto/drover/v1/*.proto
on the Python path (see README.md beside this file). Model "m" must be routable on the data
plane. Prints one line per step; exits non-zero on the first unexpected answer.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from drover.v1 import admin_pb2, admin_pb2_grpc

GRPC_ADDR = os.environ["DROVER_GRPC"]
ADMIN_TOKEN = os.environ["DROVER_ADMIN_TOKEN"]
DATAPLANE = os.environ["DROVER_DATAPLANE"].rstrip("/")

# Every admin call carries the admin token.
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def check(ok, what):
    """Exits with status 1 and `what` on stderr unless `ok`."""
    if not ok:
        sys.exit(f"FAILED: {what}")


def wait_for_version(admin, version, timeout_s=30.0):
    """Polls Status until every connected data plane serves `version` or newer."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = admin.Status(admin_pb2.StatusRequest(), metadata=AUTH)
        connected = [dp for dp in status.dataplanes if dp.connected]
        if connected and all(dp.served_version >= version for dp in connected):
            return
        check(
            time.monotonic() < deadline,
            f"data planes did not reach version {version} in {timeout_s}s: "
            + ", ".join(f"{dp.id}={dp.served_version}" for dp in status.dataplanes),
        )
        time.sleep(0.05)


def chat(secret):
    """POST /v1/chat/completions for model "m" with `secret`; returns (HTTP status, JSON body)."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        f"{DATAPLANE}/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def main():
    admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(GRPC_ADDR))

    # 1. A tenant. The request_id makes the call safe to retry: the same request_id with the
    #    same arguments gets the first answer again instead of ALREADY_EXISTS.
    tenant = f"team-{uuid.uuid4().hex[:8]}"
    create_tenant = admin_pb2.CreateTenantRequest(
        name=tenant, labels={"cost-center": "platform"}, request_id=str(uuid.uuid4())
    )
    created = admin.CreateTenant(create_tenant, metadata=AUTH)
    print(f"created tenant {created.tenant.name} at version {created.version}")
    retried = admin.CreateTenant(create_tenant, metadata=AUTH)
    check(retried == created, f"retry answered {retried}, first call {created}")
    print(f"retried CreateTenant with the same request_id: same answer (version {retried.version})")

    # 2. The auth module: from now on every data plane refuses calls without a valid key.
    module = admin.SetModule(admin_pb2.SetModuleRequest(name="auth", enabled=True), metadata=AUTH)
    check(module.module.enabled, f"auth module not enabled: {module.module}")
    print(f"auth module on at version {module.version}")

    # 3. A key of the tenant that may use model "m" only. The secret is shown this once.
    key = admin.CreateKey(
        admin_pb2.CreateKeyRequest(
            tenant=tenant, name="example", models=["m"], request_id=str(uuid.uuid4())
        ),
        metadata=AUTH,
    )
    print(f"created key {key.key.id} ({key.key.prefix}...) at version {key.version}")

    # 4. Changes reach the data planes asynchronously; wait until they serve the key.
    wait_for_version(admin, key.version)
    print(f"data planes serve version {key.version}")

    status, body = chat(key.secret)
    check(status == 200, f"chat with the key: HTTP {status} {body}")
    print("chat with the key: HTTP 200")

    # 5. Revoke the key; once the data planes serve the revocation, it is refused.
    revoked = admin.RevokeKey(admin_pb2.RevokeKeyRequest(id=key.key.id), metadata=AUTH)
    check(
        revoked.key.state == admin_pb2.KEY_STATE_REVOKED,
        f"key state after RevokeKey: {admin_pb2.KeyState.Name(revoked.key.state)}",
    )
    print(f"revoked key {revoked.key.id} at version {revoked.version}")
    wait_for_version(admin, revoked.version)
    print(f"data planes serve version {revoked.version}")

    status, body = chat(key.secret)
    code = body.get("error", {}).get("code")
    check(status == 401 and code == "invalid_api_key", f"chat with the revoked key: HTTP {status} {body}")
    print(f"chat with the revoked key: HTTP 401 {code}")

    # 6. An invalid argument: the status details carry a google.rpc.BadRequest naming the field.
    try:
        admin.CreateTenant(admin_pb2.CreateTenantRequest(name="Bad Name"), metadata=AUTH)
        check(False, 'CreateTenant accepted the name "Bad Name"')
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"expected INVALID_ARGUMENT, got {err}")
        details = rpc_status.from_call(err)
        check(details is not None, "INVALID_ARGUMENT without status details")
        violations = []
        for detail in details.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(bad_request.field_violations)
        check(violations, f"no BadRequest in the status details: {details}")
        for violation in violations:
            print(f"INVALID_ARGUMENT field violation: {violation.field}: {violation.description}")
        check(
            [v.field for v in violations] == ["name"],
            f"expected one violation of field name, got {[v.field for v in violations]}",
        )


if __name__ == "__main__":
    main()
