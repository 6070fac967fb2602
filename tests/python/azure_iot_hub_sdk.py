"""Fidelity check: the official Python SDK `azure-iot-hub` (IoTHubRegistryManager) against the
idbridge IoT Hub mock. Run by connectors/azure/tests/python_sdk.rs, which starts the mock and
passes its connection string, the device ids and thumbprints in the environment, and the mock's
CA in REQUESTS_CA_BUNDLE (for this command only). Prints one JSON line; exits non-zero on any
mismatch.

Needs: pip install azure-iot-hub six
"""

import json
import os
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import (
    AuthenticationMechanism,
    ExportImportDevice,
    QuerySpecification,
    X509Thumbprint,
)
from msrest.exceptions import HttpOperationError


def status_of(call):
    try:
        call()
    except HttpOperationError as e:
        return e.response.status_code, e.response.headers.get("iothub-errorcode")
    return 200, None


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}))
        sys.exit(1)


def main():
    cs = os.environ["IOTHUB_CONNECTION_STRING"]
    a, ta = os.environ["DEV_A_ID"], os.environ["DEV_A_THUMB"]
    b, tb = os.environ["DEV_B_ID"], os.environ["DEV_B_THUMB"]
    c, tc = os.environ["DEV_C_ID"], os.environ["DEV_C_THUMB"]
    rm = IoTHubRegistryManager.from_connection_string(cs)

    # create_device_with_x509: PUT /devices/{id}, no If-Match.
    dev = rm.create_device_with_x509(a, ta, ta, "enabled")
    check(dev.device_id == a, "create: device id")
    check(dev.authentication.type == "selfSigned", "create: auth type")
    check(dev.authentication.x509_thumbprint.primary_thumbprint.upper() == ta.upper(), "create: primary thumbprint")
    check(dev.authentication.x509_thumbprint.secondary_thumbprint.upper() == ta.upper(), "create: secondary thumbprint")
    check(bool(dev.etag), "create: etag")

    # The same create again: 409 DeviceAlreadyExists.
    dup = status_of(lambda: rm.create_device_with_x509(a, ta, ta, "enabled"))
    check(dup == (409, "DeviceAlreadyExists"), "duplicate create: %r" % (dup,))

    # bulk_create_or_update_devices: POST /devices with a bare array.
    def item(i, t, mode="create"):
        return ExportImportDevice(
            id=i,
            import_mode=mode,
            status="enabled",
            authentication=AuthenticationMechanism(
                type="selfSigned",
                x509_thumbprint=X509Thumbprint(primary_thumbprint=t, secondary_thumbprint=t),
            ),
        )

    res = rm.bulk_create_or_update_devices([item(b, tb), item(c, tc)])
    check(res.is_successful, "bulk create: is_successful")
    res2 = rm.bulk_create_or_update_devices([item(b, tb)])
    check(not res2.is_successful, "bulk re-create: not successful")
    # The service sends the numeric code (409001); the SDK's model types it as a string.
    check(str(res2.errors[0].error_code) == "409001", "bulk re-create: error code %r" % res2.errors[0].error_code)
    check("DeviceAlreadyExists" in (res2.errors[0].error_status or ""), "bulk re-create: error status %r" % res2.errors[0].error_status)
    check(res2.errors[0].device_id == b, "bulk re-create: device id")

    # get_device, then a conditional update with its etag (If-Match: "<etag>").
    got = rm.get_device(c)
    check(got.authentication.x509_thumbprint.primary_thumbprint.upper() == tc.upper(), "get: thumbprint")
    upd = rm.update_device_with_x509(c, '"%s"' % got.etag, tc, tc, "disabled")
    check(upd.status == "disabled", "update: status")
    stale = status_of(lambda: rm.update_device_with_x509(c, '"%s"' % got.etag, tc, tc, "enabled"))
    check(stale == (412, "PreconditionFailed"), "stale etag: %r" % (stale,))

    # delete_device (If-Match: "*"), then get: 404.
    rm.delete_device(b)
    gone = status_of(lambda: rm.get_device(b))
    check(gone[0] == 404, "get after delete: %r" % (gone,))

    # Query and statistics.
    q = rm.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"))
    ids = sorted(t.device_id for t in q.items)
    check(ids == sorted([a, c]), "query: %r" % ids)
    stats = rm.get_device_registry_statistics()
    check(stats.total_device_count == 2 and stats.disabled_device_count == 1, "statistics")

    # A wrong key: 401 IotHubUnauthorizedAccess.
    parts = dict(p.split("=", 1) for p in cs.split(";"))
    bad_key = "A" * 43 + "="
    bad = IoTHubRegistryManager.from_connection_string(
        "HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s"
        % (parts["HostName"], parts["SharedAccessKeyName"], bad_key)
    )
    unauth = status_of(lambda: bad.get_device(a))
    check(unauth == (401, "IotHubUnauthorizedAccess"), "wrong key: %r" % (unauth,))

    print(json.dumps({"ok": True, "devices": ids}))


if __name__ == "__main__":
    main()
