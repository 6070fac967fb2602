//! The REST-JSON front of the mock: AWS IoT's paths and methods, SigV4, per-API quotas answered
//! with `ThrottlingException`, and AWS's error bodies and headers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use http::{Request, Response};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::sigv4::{self, Signed};
use super::state::{AwsError, Registry, request_id};
use crate::clock::MockClock;

/// State shared by the control plane and the device endpoint.
#[derive(Debug)]
pub(crate) struct Shared {
    pub registry: Mutex<Registry>,
    pub keys: BTreeMap<String, String>,
    pub region: String,
    pub quotas: Mutex<HashMap<String, Bucket>>,
    pub throttled: AtomicU64,
    pub calls: Mutex<BTreeMap<String, u64>>,
    pub clock: MockClock,
}

/// A token bucket holding at most one second of calls (at least one).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    pub(crate) fn new(rate: f64, now: Duration) -> Self {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    fn take(&mut self, now: Duration) -> bool {
        let cap = self.rate.max(1.0);
        self.tokens =
            (self.tokens + now.saturating_sub(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock means a handler panicked mid-update; the maps are still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn throttle(&self, api: &str) -> bool {
        let mut q = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        match q.get_mut(api) {
            Some(b) => !b.take(self.clock.now()),
            None => false,
        }
    }
}

/// The axum fallback handler: every request goes through here.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    req: Request<Body>,
) -> Response<Body> {
    let rid = request_id();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                &rid,
                &AwsError::invalid("request body too large or unreadable"),
            );
        }
    };
    let raw_path = parts.uri.path();
    let raw_query = parts.uri.query();
    if raw_path == "/_mock/aws/stats" {
        // Mock-only, unsigned: what a benchmark or test in another process reads back.
        let calls = shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let body = serde_json::json!({
            "throttled": shared.throttled.load(Ordering::Relaxed),
            "calls": calls,
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    let segs: Vec<String> = raw_path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let query: HashMap<String, String> = raw_query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let principal = parts
        .headers
        .get("x-amzn-principal")
        .and_then(|v| v.to_str().ok());
    let method = parts.method.as_str();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let Some(api) = operation(method, &seg) else {
        return error(
            &rid,
            &AwsError::new(
                404,
                "UnknownOperationException",
                format!("No operation for {method} {raw_path}"),
            ),
        );
    };
    let signed = Signed {
        method,
        raw_path,
        raw_query,
        headers: &parts.headers,
        body: &body,
    };
    if let Err(e) = sigv4::verify(
        &signed,
        &shared.keys,
        &shared.region,
        time::OffsetDateTime::now_utc(),
    ) {
        return error(&rid, &e);
    }
    *shared
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(api.to_owned())
        .or_default() += 1;
    if shared.throttle(api) {
        shared.throttled.fetch_add(1, Ordering::Relaxed);
        return error(
            &rid,
            &AwsError::new(400, "ThrottlingException", "Rate exceeded"),
        );
    }
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    &rid,
                    &AwsError::new(
                        400,
                        "SerializationException",
                        format!("Malformed JSON body: {e}"),
                    ),
                );
            }
        }
    };
    let q = |k: &str| query.get(k).map(String::as_str);
    let num = |k: &str| q(k).and_then(|v| v.parse::<usize>().ok());
    let mut r = shared.lock();
    let result = match (api, &seg[..]) {
        ("RegisterCertificateWithoutCA", _) => r.register_without_ca(&json),
        ("ListCertificates", _) => r.list_certificates(
            num("pageSize"),
            q("marker"),
            q("isAscendingOrder") == Some("true"),
        ),
        ("DescribeCertificate", [_, id]) => r.describe_certificate(id),
        ("UpdateCertificate", [_, id]) => r.update_certificate(id, q("newStatus")),
        ("DeleteCertificate", [_, id]) => {
            r.delete_certificate(id, q("forceDelete") == Some("true"))
        }
        ("ListThings", _) => r.list_things(num("maxResults"), q("nextToken")),
        ("CreateThing", [_, n]) => r.create_thing(n, &json),
        ("DescribeThing", [_, n]) => r.describe_thing(n),
        ("DeleteThing", [_, n]) => {
            r.delete_thing(n, q("expectedVersion").and_then(|v| v.parse().ok()))
        }
        ("AttachThingPrincipal", [_, n, _]) => {
            r.attach_thing_principal(n, principal, q("thingPrincipalType"))
        }
        ("DetachThingPrincipal", [_, n, _]) => r.detach_thing_principal(n, principal),
        ("ListThingPrincipals", [_, n, _]) => {
            r.list_thing_principals(n, false, num("maxResults"), q("nextToken"))
        }
        ("ListThingPrincipalsV2", [_, n, _]) => {
            r.list_thing_principals(n, true, num("maxResults"), q("nextToken"))
        }
        ("ListPrincipalThings", _) => {
            r.list_principal_things(principal, false, num("maxResults"), q("nextToken"))
        }
        ("ListPrincipalThingsV2", _) => {
            r.list_principal_things(principal, true, num("maxResults"), q("nextToken"))
        }
        ("CreatePolicy", [_, n]) => r.create_policy(n, &json),
        ("GetPolicy", [_, n]) => r.get_policy(n),
        ("AttachPolicy", [_, n]) => r.attach_policy(n, &json),
        ("DetachPolicy", [_, n]) => r.detach_policy(n, &json),
        ("ListAttachedPolicies", [_, rest @ ..]) => {
            r.list_attached_policies(&rest.join("/"), num("pageSize"), q("marker"))
        }
        ("CreateThingType", [_, n]) => r.create_thing_type(n),
        ("DescribeThingType", [_, n]) => r.describe_thing_type(n),
        ("AddThingToThingGroup", _) => r.group_membership(true, &json),
        ("RemoveThingFromThingGroup", _) => r.group_membership(false, &json),
        ("CreateThingGroup", [_, n]) => r.create_thing_group(n),
        ("DescribeThingGroup", [_, n]) => r.describe_thing_group(n),
        ("ListThingsInThingGroup", [_, n, _]) => {
            r.list_things_in_group(n, num("maxResults"), q("nextToken"))
        }
        ("DescribeEndpoint", _) => r.describe_endpoint(q("endpointType")),
        _ => Err(AwsError::new(
            404,
            "UnknownOperationException",
            format!("No operation for {method} {raw_path}"),
        )),
    };
    drop(r);
    tracing::debug!(api, request_id = %rid, ok = result.is_ok(), "mock aws iot");
    match result {
        Ok(v) => {
            let body = if v.is_null() {
                String::new()
            } else {
                v.to_string()
            };
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-amzn-RequestId", &rid)
                .body(Body::from(body))
                .unwrap_or_else(|_| Response::new(Body::empty()))
        }
        Err(e) => error(&rid, &e),
    }
}

/// The AWS operation a request names, by method and path.
pub(crate) fn operation(method: &str, seg: &[&str]) -> Option<&'static str> {
    Some(match (method, seg) {
        ("POST", ["certificate", "register-no-ca"]) => "RegisterCertificateWithoutCA",
        ("GET", ["certificates"]) => "ListCertificates",
        ("GET", ["certificates", _]) => "DescribeCertificate",
        ("PUT", ["certificates", _]) => "UpdateCertificate",
        ("DELETE", ["certificates", _]) => "DeleteCertificate",
        ("GET", ["things"]) => "ListThings",
        ("POST", ["things", _]) => "CreateThing",
        ("GET", ["things", _]) => "DescribeThing",
        ("DELETE", ["things", _]) => "DeleteThing",
        ("PUT", ["things", _, "principals"]) => "AttachThingPrincipal",
        ("DELETE", ["things", _, "principals"]) => "DetachThingPrincipal",
        ("GET", ["things", _, "principals"]) => "ListThingPrincipals",
        ("GET", ["things", _, "principals-v2"]) => "ListThingPrincipalsV2",
        ("GET", ["principals", "things"]) => "ListPrincipalThings",
        ("GET", ["principals", "things-v2"]) => "ListPrincipalThingsV2",
        ("POST", ["policies", _]) => "CreatePolicy",
        ("GET", ["policies", _]) => "GetPolicy",
        ("PUT", ["target-policies", _]) => "AttachPolicy",
        ("POST", ["target-policies", _]) => "DetachPolicy",
        ("POST", ["attached-policies", _, ..]) => "ListAttachedPolicies",
        ("POST", ["thing-types", _]) => "CreateThingType",
        ("GET", ["thing-types", _]) => "DescribeThingType",
        ("PUT", ["thing-groups", "addThingToThingGroup"]) => "AddThingToThingGroup",
        ("PUT", ["thing-groups", "removeThingFromThingGroup"]) => "RemoveThingFromThingGroup",
        ("POST", ["thing-groups", _]) => "CreateThingGroup",
        ("GET", ["thing-groups", _]) => "DescribeThingGroup",
        ("GET", ["thing-groups", _, "things"]) => "ListThingsInThingGroup",
        ("GET", ["endpoint"]) => "DescribeEndpoint",
        _ => return None,
    })
}

/// AWS's error answer: status, `x-amzn-ErrorType`, `x-amzn-RequestId`, JSON `{"message"...}`.
pub(crate) fn error(rid: &str, e: &AwsError) -> Response<Body> {
    let mut body = serde_json::json!({"message": e.message});
    if let Some((id, arn)) = &e.resource {
        body["resourceId"] = Value::from(id.as_str());
        body["resourceArn"] = Value::from(arn.as_str());
    }
    Response::builder()
        .status(e.status)
        .header("content-type", "application/json")
        .header("x-amzn-ErrorType", e.code)
        .header("x-amzn-RequestId", rid)
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
