//! The receiver's backend: verify each certificate against the trust store, then provision the
//! valid ones through the engine (journal, pacing, retries) into every configured target.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use idbridge::app;
use idbridge_core::engine::{Engine, NoProgress};
use idbridge_core::journal::{DeviceRecord, DeviceState, Operation, Outcome as JournalOutcome};
use idbridge_core::trust::Verifier;
use idbridge_core::{DeviceId, DeviceIdentity, ErrorKind, Source};
use idbridge_http::client::FingerprintStatus;

use super::{Backend, Item, Outcome};

/// Infineon's message for a failed cloud registration (verbatim).
const MSG_REGISTER_FAILED: &str = "Failed creating and registering thing";

/// Verifier + engines, one per target.
pub struct EngineBackend {
    verifier: Arc<Verifier>,
    targets: Vec<(String, Arc<Engine>)>,
    endpoint: Option<String>,
}

impl std::fmt::Debug for EngineBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBackend")
            .field(
                "targets",
                &self.targets.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl EngineBackend {
    /// A backend provisioning into `targets` (name, engine) after `verifier` admits a
    /// certificate; `endpoint` overrides the endpoint answered for successes.
    pub fn new(
        verifier: Arc<Verifier>,
        targets: Vec<(String, Arc<Engine>)>,
        endpoint: Option<String>,
    ) -> Self {
        EngineBackend {
            verifier,
            targets,
            endpoint,
        }
    }

    /// Verifies items; `Ok(identity)` for those that may be provisioned, `Err(outcome)` else.
    /// Chain verification is CPU work: done off the async workers.
    async fn admit(&self, items: &[Item]) -> Vec<Result<DeviceIdentity, Outcome>> {
        let verifier = Arc::clone(&self.verifier);
        let owned = items.to_vec();
        match tokio::task::spawn_blocking(move || admit_all(&verifier, &owned)).await {
            Ok(v) => v,
            Err(e) => items
                .iter()
                .map(|_| {
                    Err(Outcome::Error {
                        message: format!("certificate verification failed: {e}"),
                        code: "outcome_unknown",
                    })
                })
                .collect(),
        }
    }
}

fn admit_all(verifier: &Verifier, items: &[Item]) -> Vec<Result<DeviceIdentity, Outcome>> {
    let mut keys = idbridge_core::trust::DuplicateKeys::new();
    items
            .iter()
            .map(|it| {
                let (identity, verdict) = verifier.verify_der(&it.der);
                let mut identity = match identity {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::info!(reference = %it.reference, error = %e, "undecodable certificate");
                        return Err(Outcome::Error {
                            message: super::api::MSG_CANNOT_DECODE.into(),
                            code: "invalid_certificate",
                        });
                    }
                };
                identity.source = Source {
                    file: format!("interop ref {}", it.reference),
                    line: None,
                    entry: None,
                };
                match idbridge::app::judge(identity, &verdict, false) {
                    Ok(identity) => match keys.check(&identity) {
                        None => Ok(identity),
                        Some(why) => {
                            tracing::warn!(reference = %it.reference, device_id = %identity.device_id, reason = %why, "duplicate public key");
                            Err(Outcome::Error {
                                message: format!("certificate refused: {why}"),
                                code: "duplicate_key",
                            })
                        }
                    },
                    Err(refused) if refused.status == "not_provisionable" => Err(Outcome::Error {
                        message: format!("certificate not provisionable: {}", refused.reason),
                        code: "not_provisionable",
                    }),
                    Err(refused) => {
                        tracing::info!(
                            reference = %it.reference,
                            device_id = refused.device_id.as_deref().unwrap_or(""),
                            reason = %refused.reason,
                            "certificate refused by the trust store"
                        );
                        Err(Outcome::Error {
                            message: format!(
                                "certificate does not chain to a trusted vendor root: {}",
                                refused.reason
                            ),
                            code: "untrusted",
                        })
                    }
                }
            })
            .collect()
}

impl EngineBackend {
    async fn run(&self, operation: Operation, items: &[Item]) -> Vec<Outcome> {
        let admitted = self.admit(items).await;
        // One job per request and target, over the distinct valid devices.
        let mut unique: Vec<DeviceIdentity> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in admitted.iter().flatten() {
            if seen.insert(i.device_id.clone()) {
                unique.push(i.clone());
            }
        }
        let mut per_target: Vec<(String, HashMap<DeviceId, DeviceRecord>, Option<String>)> =
            Vec::new();
        if !unique.is_empty() {
            for (name, engine) in &self.targets {
                match engine
                    .execute(
                        operation,
                        name,
                        unique.clone(),
                        serde_json::json!({"via": "serve"}),
                        &NoProgress,
                    )
                    .await
                {
                    Ok(report) => {
                        let map = report
                            .devices
                            .into_iter()
                            .map(|r| (r.device_id.clone(), r))
                            .collect();
                        per_target.push((name.clone(), map, report.aborted));
                    }
                    Err(e) => {
                        tracing::warn!(target_name = %name, error = %e, "engine job failed");
                        per_target.push((name.clone(), HashMap::new(), Some(e.to_string())));
                    }
                }
            }
        }
        admitted
            .into_iter()
            .map(|a| match a {
                Err(out) => out,
                Ok(identity) => self.combine(operation, &identity.device_id, &per_target),
            })
            .collect()
    }

    /// One outcome from every target's record of a device: success only if all succeeded.
    fn combine(
        &self,
        operation: Operation,
        id: &DeviceId,
        per_target: &[(String, HashMap<DeviceId, DeviceRecord>, Option<String>)],
    ) -> Outcome {
        let mut endpoint = self.endpoint.clone();
        let mut created = false;
        let mut all_not_found = true;
        for (name, records, aborted) in per_target {
            let Some(r) = records.get(id) else {
                return Outcome::Error {
                    message: format!(
                        "{MSG_REGISTER_FAILED} (target {name}: {})",
                        aborted.as_deref().unwrap_or("no record")
                    ),
                    code: "target_error",
                };
            };
            match (r.state, r.outcome) {
                (DeviceState::Done, o) => {
                    created |= matches!(
                        o,
                        Some(JournalOutcome::Created) | Some(JournalOutcome::Deleted)
                    );
                    all_not_found &= matches!(o, Some(JournalOutcome::NotFound));
                    if endpoint.is_none() {
                        endpoint = r.resources.get("endpoint").cloned();
                    }
                }
                (DeviceState::Failed, Some(JournalOutcome::Conflict)) => {
                    return Outcome::Error {
                        message: format!(
                            "target {name}: a different registration exists: {}",
                            r.reason.as_deref().unwrap_or("conflict")
                        ),
                        code: "conflict",
                    };
                }
                (state, _) => {
                    let code = match r.error_kind.as_deref() {
                        Some(k) if k == ErrorKind::RateLimited.as_str() => "rate_limited",
                        Some(k) if k == ErrorKind::InvalidInput.as_str() => "invalid_certificate",
                        Some(k)
                            if k == ErrorKind::PermissionDenied.as_str()
                                || k == ErrorKind::Unauthenticated.as_str() =>
                        {
                            "permission_denied"
                        }
                        _ if state != DeviceState::Failed => "outcome_unknown",
                        _ => "target_error",
                    };
                    return Outcome::Error {
                        message: format!(
                            "{MSG_REGISTER_FAILED} (target {name}: {})",
                            r.reason
                                .as_deref()
                                .or(aborted.as_deref())
                                .unwrap_or(state_name(state))
                        ),
                        code,
                    };
                }
            }
        }
        if operation == Operation::Deprovision && all_not_found {
            return Outcome::NotFound;
        }
        Outcome::Success { endpoint, created }
    }
}

fn state_name(s: DeviceState) -> &'static str {
    match s {
        DeviceState::Pending => "not attempted",
        DeviceState::InFlight | DeviceState::Unknown => "outcome unknown",
        DeviceState::Done => "done",
        DeviceState::Failed => "failed",
    }
}

#[async_trait]
impl Backend for EngineBackend {
    async fn provision(&self, items: &[Item]) -> Vec<Outcome> {
        self.run(Operation::Provision, items).await
    }

    async fn deprovision(&self, items: &[Item]) -> Vec<Outcome> {
        self.run(Operation::Deprovision, items).await
    }

    /// From the journal: the newest record of each device in a job of the first target.
    async fn lookup(&self, fingerprints: &[String]) -> Vec<FingerprintStatus> {
        let mut out = Vec::with_capacity(fingerprints.len());
        for fp in fingerprints {
            out.push(self.lookup_one(fp).await);
        }
        out
    }
}

/// Newest jobs scanned by a fingerprint `status`.
const STATUS_SCAN_JOBS: usize = 500;

impl EngineBackend {
    async fn lookup_one(&self, fp: &str) -> FingerprintStatus {
        let status = |s: &str, endpoint: Option<String>| FingerprintStatus {
            fingerprint: fp.to_owned(),
            status: s.to_owned(),
            endpoint,
        };
        let (Ok(id), Some((name, engine))) = (fp.parse::<DeviceId>(), self.targets.first()) else {
            return status("UNKNOWN", None);
        };
        let journal = engine.journal();
        let jobs = match journal.jobs().await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "journal unreadable for status");
                return status("UNKNOWN", None);
            }
        };
        for job in jobs
            .iter()
            .filter(|j| &j.spec.target == name)
            .take(STATUS_SCAN_JOBS)
        {
            let Ok(records) = journal.devices(&job.id).await else {
                continue;
            };
            let Some(r) = records.into_iter().find(|r| r.device_id == id) else {
                continue;
            };
            return match (job.spec.operation, r.state) {
                (Operation::Provision, DeviceState::Done) => status(
                    "PRESENT",
                    self.endpoint
                        .clone()
                        .or_else(|| r.resources.get("endpoint").cloned()),
                ),
                (Operation::Deprovision, DeviceState::Done) => status("ABSENT", None),
                (_, DeviceState::Failed) => continue,
                _ => status("PENDING", None),
            };
        }
        status("ABSENT", None)
    }
}

/// Builds the backend of `idbridge serve`: the trust verifier from `trust`, one journal, and an
/// engine per `[serve] targets` entry.
pub async fn build(
    config_path: &std::path::Path,
    cfg: &super::ServeConfig,
    trust: &idbridge_core::intake::TrustOptions,
    journal_override: Option<String>,
) -> anyhow::Result<Arc<dyn Backend>> {
    use anyhow::Context as _;

    let verifier = Arc::new(Verifier::from_options(trust).context("trust store")?);
    reload_crls_on_sighup(Arc::clone(&verifier));
    let config = app::Config::load(Some(config_path))?;
    let journal_url = app::journal_url(journal_override.as_deref(), &config);
    let journal = app::open_journal(&journal_url)?;
    let mut targets = Vec::new();
    for name in &cfg.targets {
        let target = config
            .target(name)
            .with_context(|| format!("[serve] targets: {name}"))?;
        let run = app::TargetRun::with_journal(
            &config,
            target,
            Arc::clone(&journal),
            journal_url.clone(),
            &app::EngineOverrides::default(),
        )
        .await?;
        targets.push((name.clone(), run.engine));
    }
    Ok(Arc::new(EngineBackend::new(
        verifier,
        targets,
        cfg.endpoint.clone(),
    )))
}

/// Looks at the CRL files on every SIGHUP (besides the periodic look of every verification).
fn reload_crls_on_sighup(verifier: Arc<Verifier>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: CRLs are reloaded only when checked");
            return;
        };
        while hup.recv().await.is_some() {
            let v = Arc::clone(&verifier);
            match tokio::task::spawn_blocking(move || v.reload_crls()).await {
                Ok(true) => tracing::info!("SIGHUP: changed CRL files reloaded"),
                Ok(false) => tracing::info!("SIGHUP: CRL files unchanged"),
                Err(e) => tracing::error!(%e, "SIGHUP: CRL reload task failed"),
            }
        }
    });
    #[cfg(not(unix))]
    drop(verifier);
}
