#!/usr/bin/env python3
"""Read back, with boto3, what idbridge's AWS IoT connector created.

Usage: AWS_ENDPOINT_URL=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_DEFAULT_REGION=...
       python3 tests/python/aws_readback.py '<json>'

<json> = {"devices": [{"certificate_id": "<64 hex>", "thing": "<name>", "policy": "<name>"}],
          "thing_group": "<optional group name>"}

For every device it checks, through the real AWS IoT API as boto3 speaks it (SigV4 included):
the certificate is ACTIVE with that id (SHA-256 of the DER), attached to exactly that thing
(EXCLUSIVE_THING), the policy is attached, the thing's `fingerprint` attribute is the certificate
id, and the thing is in the group. Prints one JSON line; exits 1 on any mismatch, 3 when boto3 is
missing (install it with `pip install boto3`).
"""
import json
import sys

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:
    print("boto3 is not installed: pip install boto3", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    spec = json.loads(sys.argv[1])
    iot = boto3.client("iot", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    problems = []
    report = []
    for d in spec["devices"]:
        cid, thing, policy = d["certificate_id"], d["thing"], d["policy"]
        try:
            desc = iot.describe_certificate(certificateId=cid)["certificateDescription"]
        except ClientError as e:
            problems.append(f"{cid}: DescribeCertificate: {e.response['Error']['Code']}")
            continue
        arn = desc["certificateArn"]
        if desc["certificateId"] != cid:
            problems.append(f"{cid}: certificateId is {desc['certificateId']}")
        if desc["status"] != "ACTIVE":
            problems.append(f"{cid}: status {desc['status']}")
        things = iot.list_principal_things_v2(principal=arn)["principalThingObjects"]
        if [(t["thingName"], t["thingPrincipalType"]) for t in things] != [(thing, "EXCLUSIVE_THING")]:
            problems.append(f"{cid}: attached to {things}, want {thing} EXCLUSIVE_THING")
        principals = iot.list_thing_principals(thingName=thing)["principals"]
        if arn not in principals:
            problems.append(f"{cid}: thing {thing} principals {principals}")
        policies = [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]]
        if policy not in policies:
            problems.append(f"{cid}: policies {policies}, want {policy}")
        attrs = iot.describe_thing(thingName=thing).get("attributes", {})
        if attrs.get("fingerprint") != cid:
            problems.append(f"{cid}: thing {thing} fingerprint attribute {attrs.get('fingerprint')}")
        report.append({"certificate_id": cid, "thing": thing, "status": desc["status"],
                       "mode": desc.get("certificateMode"), "policies": policies})
    group = spec.get("thing_group")
    if group:
        members = iot.list_things_in_thing_group(thingGroupName=group)["things"]
        for d in spec["devices"]:
            if d["thing"] not in members:
                problems.append(f"{d['thing']}: not in thing group {group}")
    print(json.dumps({"devices": report, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
