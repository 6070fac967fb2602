//! The preflight behind `idbridge check`: before a run of hours, one short pass over everything
//! the run will need from the account, as a checklist. Nothing is created or changed: every
//! permission probe names a resource that does not exist, so AWS answers after authorizing the
//! action (AWS IoT has no dry-run flag).

use aws_sdk_iot::config::ProvideCredentials;
use idbridge_core::{CallContext, ErrorKind};

use crate::AwsIot;
use crate::client::Probe;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckStatus {
    /// Fine.
    Pass,
    /// The run would fail: fix this first.
    Fail,
    /// Could not be decided (a 5xx, a throttle): look at it.
    Warn,
    /// A figure to know (quotas, the device endpoint).
    Info,
    /// Not checked, because an earlier check failed (no credentials ...).
    Skipped,
}

impl CheckStatus {
    /// `ok`, `FAIL`, `warn`, `info`, `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "ok",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Warn => "warn",
            CheckStatus::Info => "info",
            CheckStatus::Skipped => "skip",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone)]
pub struct CheckItem {
    /// `credentials`, `permission`, `resource`, `quota`, `endpoint`.
    pub group: &'static str,
    /// What was checked (`iot:CreateThing`, `policy "fleet"` ...).
    pub name: String,
    /// The result.
    pub status: CheckStatus,
    /// One line: what was seen, what to do.
    pub detail: String,
}

/// The actions the connector calls, and for which command.
pub const ACTIONS: &[(&str, &str)] = &[
    ("RegisterCertificateWithoutCA", "provision"),
    ("DescribeCertificate", "provision, deprovision, diff"),
    ("UpdateCertificate", "provision, deprovision"),
    ("CreateThing", "provision"),
    ("DescribeThing", "provision, diff"),
    ("AttachThingPrincipal", "provision"),
    ("ListPrincipalThingsV2", "provision, deprovision, diff"),
    ("AttachPolicy", "provision"),
    ("ListAttachedPolicies", "provision, deprovision"),
    ("DetachPolicy", "deprovision"),
    ("ListThingPrincipals", "deprovision"),
    ("DetachThingPrincipal", "deprovision"),
    ("DeleteCertificate", "deprovision"),
    ("DeleteThing", "deprovision"),
    ("AddThingToThingGroup", "provision (thing_group)"),
    ("ListThingsInThingGroup", "diff (thing_group)"),
    ("ListCertificates", "diff"),
    ("CreatePolicy", "provision (create_policy)"),
];

impl AwsIot {
    /// Runs the checklist: credentials, the device endpoint, the policy / thing type / thing
    /// group, every action the connector calls (probed), and the quotas the engine will pace to.
    pub async fn preflight(&self) -> Vec<CheckItem> {
        let ctx = CallContext::unpaced();
        let mut out = Vec::new();
        let item = |group, name: String, status, detail: String| CheckItem {
            group,
            name,
            status,
            detail,
        };
        out.push(item(
            "target",
            "region".into(),
            CheckStatus::Info,
            format!(
                "{}{}",
                self.region,
                self.cfg
                    .endpoint_url
                    .as_deref()
                    .map(|u| format!(", control plane {u}"))
                    .unwrap_or_default()
            ),
        ));

        // Credentials: the chain resolves, then AWS accepts the signature.
        match &self.credentials {
            None => {
                out.push(item(
                    "credentials",
                    "credential chain".into(),
                    CheckStatus::Fail,
                    "no credentials provider".into(),
                ));
                return out;
            }
            Some(p) => match p.provide_credentials().await {
                Ok(c) => out.push(item(
                    "credentials",
                    "credential chain".into(),
                    CheckStatus::Pass,
                    format!(
                        "resolved (access key {}…)",
                        c.access_key_id().chars().take(4).collect::<String>()
                    ),
                )),
                Err(e) => {
                    out.push(item(
                        "credentials",
                        "credential chain".into(),
                        CheckStatus::Fail,
                        format!(
                            "no AWS credentials found ({e}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                             AWS_PROFILE, or run where a role is available"
                        ),
                    ));
                    return out;
                }
            },
        }
        match self.client.data_endpoint(&ctx).await {
            Ok(host) => {
                out.push(item(
                    "credentials",
                    "credentials accepted by AWS".into(),
                    CheckStatus::Pass,
                    "signed DescribeEndpoint answered".into(),
                ));
                out.push(item(
                    "endpoint",
                    "iot:Data-ATS".into(),
                    CheckStatus::Pass,
                    format!(
                        "devices connect to {host}:8883 and must send SNI {host} (multi-account \
                         registration)"
                    ),
                ));
            }
            Err(e) if e.kind() == ErrorKind::Unauthenticated => {
                out.push(item(
                    "credentials",
                    "credentials accepted by AWS".into(),
                    CheckStatus::Fail,
                    format!(
                        "AWS rejected the credentials: {}{}",
                        e.message(),
                        request_id(&e)
                    ),
                ));
                return out;
            }
            Err(e) => out.push(item(
                "endpoint",
                "iot:Data-ATS".into(),
                status_of(&e),
                format!("DescribeEndpoint failed: {e}"),
            )),
        }

        // Resources the run needs.
        let policy = &self.cfg.policy_name;
        match self.client.policy_exists(&ctx, policy).await {
            Ok(true) => out.push(item(
                "resource",
                format!("policy {policy:?}"),
                CheckStatus::Pass,
                "exists".into(),
            )),
            Ok(false) if self.cfg.create_policy => out.push(item(
                "resource",
                format!("policy {policy:?}"),
                CheckStatus::Info,
                "missing; the first provision creates it (create_policy = true)".into(),
            )),
            Ok(false) => out.push(item(
                "resource",
                format!("policy {policy:?}"),
                CheckStatus::Fail,
                format!(
                    "policy {policy:?} does not exist: create it (docs/aws.md) or set create_policy = true"
                ),
            )),
            Err(e) => out.push(item(
                "resource",
                format!("policy {policy:?}"),
                status_of(&e),
                e.to_string(),
            )),
        }
        if let Some(t) = &self.cfg.thing_type {
            let r = self.client.thing_type_exists(&ctx, t).await;
            out.push(exists_item("thing type", t, r));
        }
        if let Some(g) = &self.cfg.thing_group {
            let r = self.client.thing_group_exists(&ctx, g).await;
            out.push(exists_item("thing group", g, r));
        }

        // Permissions: one harmless call per action.
        let probe = Probe {
            region: &self.region,
            policy,
            group: self.cfg.thing_group.as_deref(),
        };
        for (action, used_by) in ACTIONS {
            let needed = match *action {
                "AddThingToThingGroup" | "ListThingsInThingGroup" => self.cfg.thing_group.is_some(),
                "CreatePolicy" => self.cfg.create_policy,
                _ => true,
            };
            if !needed {
                continue;
            }
            let name = format!("iot:{action}");
            let r = self.client.probe(&ctx, action, &probe).await;
            let (status, detail) = match r {
                Ok(()) => (CheckStatus::Pass, format!("allowed ({used_by})")),
                Err(e) => match e.kind() {
                    ErrorKind::PermissionDenied => (
                        CheckStatus::Fail,
                        format!(
                            "denied: add {name} to the IAM policy (needed by {used_by}){}",
                            request_id(&e)
                        ),
                    ),
                    ErrorKind::Unauthenticated => (
                        CheckStatus::Fail,
                        format!("credentials rejected: {}", e.message()),
                    ),
                    ErrorKind::NotFound
                    | ErrorKind::InvalidInput
                    | ErrorKind::ConfigInvalid
                    | ErrorKind::Conflict
                    | ErrorKind::AlreadyExists => (
                        CheckStatus::Pass,
                        format!(
                            "allowed ({used_by}; probe refused after authorization: {})",
                            e.kind()
                        ),
                    ),
                    _ => (CheckStatus::Warn, format!("undecided: {e}")),
                },
            };
            out.push(item("permission", name, status, detail));
        }

        // Quotas the engine paces to.
        for q in self.cfg.quotas() {
            if ACTIONS.iter().any(|(a, _)| *a == q.api) {
                let configured = self.cfg.quotas.contains_key(&q.api);
                out.push(item(
                    "quota",
                    q.api.clone(),
                    CheckStatus::Info,
                    format!(
                        "{}/s{} (raise in Service Quotas, then set quotas.{} in the target)",
                        q.per_second,
                        if configured {
                            " configured"
                        } else {
                            " AWS default"
                        },
                        q.api
                    ),
                ));
            }
        }
        out
    }
}

fn exists_item(what: &str, name: &str, r: idbridge_core::Result<bool>) -> CheckItem {
    let (status, detail) = match r {
        Ok(true) => (CheckStatus::Pass, "exists".to_owned()),
        Ok(false) => (
            CheckStatus::Fail,
            format!("{what} {name:?} does not exist: create it first (CreateThing needs it)"),
        ),
        Err(e) => (status_of(&e), e.to_string()),
    };
    CheckItem {
        group: "resource",
        name: format!("{what} {name:?}"),
        status,
        detail,
    }
}

fn status_of(e: &idbridge_core::Error) -> CheckStatus {
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::ConfigInvalid => {
            CheckStatus::Fail
        }
        _ => CheckStatus::Warn,
    }
}

fn request_id(e: &idbridge_core::Error) -> String {
    e.request_id()
        .map(|r| format!(" (request id {r})"))
        .unwrap_or_default()
}
