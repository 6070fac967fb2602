//! What the pages show, read from the service API's JSON answers.

use serde_json::Value;

/// Target kinds offered in the target form (the kinds `idbridge.toml` accepts).
pub const KINDS: &[&str] = &[
    "mock",
    "aws-iot",
    "azure-iot-hub",
    "azure-dps",
    "http",
    "interop",
    "manifest",
    "gcp-firestore",
    "gcp-pubsub",
];

/// The signed-in account.
#[derive(Debug, Clone)]
pub struct Who {
    /// Account name.
    pub account: String,
    /// `binder` or `admin`.
    pub role: String,
}

impl Who {
    /// Whether the role may see admin pages.
    pub fn admin(&self) -> bool {
        self.role == "admin"
    }

    /// From `GET /api/v1/whoami`.
    pub fn from_json(v: &Value) -> Self {
        Who {
            account: first(v, &["account", "account_name", "name"]),
            role: first(v, &["role"]),
        }
    }
}

/// A binding row.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    /// Binding id.
    pub id: String,
    /// `batch` or `reel` (never the secret ids).
    pub scope: String,
    /// Valid devices bound.
    pub valid: u64,
    /// Refused devices (invalid certificates, never provisioned).
    pub refused: u64,
    /// manifest / manual / automatic.
    pub mode: String,
    /// Target name.
    pub target: String,
    /// State.
    pub state: String,
    /// When bound.
    pub created: String,
    /// Job ids of the binding, newest first.
    pub jobs: Vec<String>,
}

impl Binding {
    /// From one binding object of the API.
    pub fn from_json(v: &Value) -> Self {
        let v = v.get("binding").unwrap_or(v);
        let mut jobs: Vec<String> = v
            .get("jobs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|j| match j {
                        Value::String(s) => s.clone(),
                        other => first(other, &["id", "job_id"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for key in ["job/id", "job_id", "last_job/id"] {
            let j = text(v, key);
            if !j.is_empty() && !jobs.contains(&j) {
                jobs.insert(0, j);
            }
        }
        Binding {
            id: first(v, &["id", "binding_id"]),
            scope: first(v, &["scope", "batch", "reel"]),
            valid: count(
                v,
                &[
                    "valid",
                    "devices",
                    "devices_valid",
                    "counts/valid",
                    "devices/valid",
                ],
            ),
            refused: count(
                v,
                &[
                    "refused",
                    "devices_refused",
                    "counts/refused",
                    "devices/refused",
                ],
            ),
            mode: first(v, &["mode"]),
            target: first(v, &["target"]),
            state: first(v, &["state", "status"]),
            created: time_text(v, &["created_ms", "created_at", "bound_at"]),
            jobs,
        }
    }
}

/// A job summary.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// State (`running`, `done`, `failed` ...).
    pub state: String,
    /// Devices finished successfully.
    pub done: u64,
    /// Devices failed.
    pub failed: u64,
    /// All devices of the job.
    pub total: u64,
    /// The binding the job belongs to.
    pub binding: Option<String>,
}

impl Job {
    /// From `GET /api/v1/jobs/{id}`.
    pub fn from_json(v: &Value) -> Self {
        let v = v.get("job").unwrap_or(v);
        let binding = first(v, &["binding_id", "binding"]);
        Job {
            id: first(v, &["id", "job_id"]),
            state: first(v, &["state", "status"]),
            done: count(v, &["done", "succeeded", "counts/done", "counts/succeeded"]),
            failed: count(v, &["failed", "counts/failed"]),
            total: count(v, &["total", "devices", "counts/total"]),
            binding: (!binding.is_empty()).then_some(binding),
        }
    }

    /// Whether the job has ended, or every device has (its state may follow a moment later).
    pub fn finished(&self) -> bool {
        self.state_ended() || (self.total > 0 && self.done + self.failed >= self.total)
    }

    /// Whether the job's state says it has ended: the live page stops updating only then, so
    /// that it shows the final state, not the last one before it.
    pub fn state_ended(&self) -> bool {
        matches!(
            self.state.as_str(),
            "done"
                | "succeeded"
                | "completed"
                | "finished"
                | "failed"
                | "cancelled"
                | "partial"
                | "stopped"
        )
    }
}

/// Progress figures for the job page and its events.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    /// State text.
    pub state: String,
    /// Done devices.
    pub done: u64,
    /// Failed devices.
    pub failed: u64,
    /// Devices still to do.
    pub remaining: u64,
    /// All devices.
    pub total: u64,
    /// Whole percent of devices finished (done or failed).
    pub percent: u64,
    /// Devices a second, formatted ("–" before any rate is known).
    pub rate: String,
    /// Time left, formatted.
    pub eta: String,
    /// Per-device errors (device id, error).
    pub errors: Vec<DeviceError>,
}

/// One failed device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceError {
    /// Device id.
    pub device_id: String,
    /// The last error.
    pub error: String,
}

impl Progress {
    /// Figures of `job`; `rate` in devices a second when known.
    pub fn of(job: &Job, rate: Option<f64>) -> Self {
        let finished = job.done + job.failed;
        let remaining = job.total.saturating_sub(finished);
        let percent = match (finished * 100).checked_div(job.total) {
            Some(p) => p.min(100),
            None if job.finished() => 100,
            None => 0,
        };
        let (rate_text, eta) = match rate {
            _ if remaining == 0 && job.finished() => (format_rate(rate), "done".to_owned()),
            Some(r) if r > 0.0 => (format_rate(Some(r)), format_duration(remaining as f64 / r)),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        Progress {
            state: job.state.clone(),
            done: job.done,
            failed: job.failed,
            remaining,
            total: job.total,
            percent,
            rate: rate_text,
            eta,
            errors: Vec::new(),
        }
    }
}

fn format_rate(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r >= 10.0 => format!("{r:.0}/s"),
        Some(r) if r > 0.0 => format!("{r:.1}/s"),
        _ => "–".to_owned(),
    }
}

/// `75 s`, `3 min 5 s`, `2 h 10 min`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A page of a list answer: items and the next cursor.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Items of the page.
    pub items: Vec<Value>,
    /// Cursor of the next page.
    pub next: Option<String>,
}

impl Page {
    /// From a list answer (`{"items":[...],"next_cursor":...}` or a bare array).
    pub fn from_json(v: &Value, keys: &[&str]) -> Self {
        let items = match v {
            Value::Array(a) => a.clone(),
            _ => keys
                .iter()
                .chain(["items", "data"].iter())
                .find_map(|k| v.get(*k).and_then(Value::as_array))
                .cloned()
                .unwrap_or_default(),
        };
        let next = first(v, &["next_cursor", "next", "cursor"]);
        Page {
            items,
            next: (!next.is_empty()).then_some(next),
        }
    }
}

/// The target form's content.
#[derive(Debug, Clone, Default)]
pub struct TargetForm {
    /// Whether the target exists (the name is fixed).
    pub existing: bool,
    /// Target name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// (key, value, is_secret) rows; secrets have empty values.
    pub keys: Vec<(String, String, bool)>,
    /// The account's default target.
    pub default: bool,
}

/// Number of blank key rows offered for new keys.
pub const BLANK_ROWS: usize = 4;

impl TargetForm {
    /// From `GET /api/v1/targets/{name}` (redacted secrets become empty write-only fields).
    pub fn from_json(v: &Value) -> Self {
        let v = v.get("target").unwrap_or(v);
        let mut keys = Vec::new();
        let config = v.get("config").unwrap_or(v);
        if let Some(map) = config.as_object() {
            for (k, val) in map {
                if matches!(k.as_str(), "name" | "kind" | "default" | "config") {
                    continue;
                }
                let secret = is_redacted(val);
                let value = if secret {
                    String::new()
                } else {
                    match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                };
                keys.push((k.clone(), value, secret));
            }
        }
        let mut form = TargetForm {
            existing: true,
            name: first(v, &["name"]),
            kind: first(config, &["kind"]),
            keys,
            default: v.get("default").and_then(Value::as_bool).unwrap_or(false),
        };
        if form.kind.is_empty() {
            form.kind = first(v, &["kind"]);
        }
        form.pad();
        form
    }

    /// Adds blank rows for new keys.
    pub fn pad(&mut self) {
        for _ in 0..BLANK_ROWS {
            self.keys.push((String::new(), String::new(), false));
        }
    }
}

/// Whether an API value is a redacted secret.
pub fn is_redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => {
            let s = s.trim();
            s.contains("redacted") || (s.len() >= 3 && s.chars().all(|c| c == '*'))
        }
        Value::Object(o) => o.get("redacted").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    }
}

/// A time field as `YYYY-MM-DD HH:MM:SS UTC`: unix milliseconds (`*_ms`) or text as given.
pub fn time_text(v: &Value, keys: &[&str]) -> String {
    for k in keys {
        match v.get(*k) {
            Some(Value::Number(n)) => {
                let Some(ms) = n.as_i64() else { continue };
                let Ok(t) =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                else {
                    continue;
                };
                return format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                );
            }
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            _ => {}
        }
    }
    String::new()
}

/// A field as display text (`""` when absent); `a/b` reads nested objects.
pub fn text(v: &Value, key: &str) -> String {
    let found = if key.contains('/') {
        v.pointer(&format!("/{key}"))
    } else {
        v.get(key)
    };
    match found {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The first non-empty of `keys`.
pub fn first(v: &Value, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| text(v, k))
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

fn count(v: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| {
            if k.contains('/') {
                v.pointer(&format!("/{k}"))
            } else {
                v.get(*k)
            }
            .and_then(Value::as_u64)
        })
        .unwrap_or(0)
}

/// `chip_id` → `Chip id`.
pub fn title_case(key: &str) -> String {
    let s = key.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn progress_percent_rate_and_eta() {
        let job = Job {
            state: "running".into(),
            done: 30,
            failed: 10,
            total: 200,
            ..Job::default()
        };
        let p = Progress::of(&job, Some(8.0));
        assert_eq!((p.percent, p.remaining), (20, 160));
        assert_eq!(p.rate, "8.0/s");
        assert_eq!(p.eta, "20 s");
        let p = Progress::of(&job, None);
        assert_eq!((p.rate.as_str(), p.eta.as_str()), ("–", "–"));
        let done = Job {
            state: "done".into(),
            done: 200,
            total: 200,
            ..Job::default()
        };
        let p = Progress::of(&done, Some(50.0));
        assert_eq!((p.percent, p.eta.as_str()), (100, "done"));
    }

    #[test]
    fn reads_the_service_binding_and_job_views() {
        let b = Binding::from_json(&json!({
            "id": "bnd_1", "batch": "bat_9", "devices": 40, "mode": "automatic",
            "target": "cloud", "created_ms": 1_764_000_000_000_i64,
            "job": {"id": "job_7", "binding": "bnd_1", "operation": "provision", "target": "cloud",
                    "state": "running", "counts": {"total": 40, "done": 10, "failed": 2, "pending": 28},
                    "created_ms": 1, "updated_ms": 2}
        }));
        assert_eq!((b.id.as_str(), b.valid), ("bnd_1", 40));
        assert_eq!(b.jobs, vec!["job_7".to_owned()]);
        assert_eq!(b.created, "2025-11-24 16:00:00 UTC");
        let j = Job::from_json(&json!({
            "id": "job_7", "binding": "bnd_1", "state": "finished",
            "counts": {"total": 40, "done": 38, "failed": 2, "pending": 0}
        }));
        assert!(j.finished());
        assert_eq!(
            (j.done, j.failed, j.total, j.binding.as_deref()),
            (38, 2, 40, Some("bnd_1"))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0.2), "1 s");
        assert_eq!(format_duration(185.0), "3 min 5 s");
        assert_eq!(format_duration(7800.0), "2 h 10 min");
    }

    #[test]
    fn redacted_secrets_become_write_only_fields() {
        let f = TargetForm::from_json(&json!({
            "name": "aws", "default": true,
            "config": {"kind": "aws-iot", "region": "eu-west-1", "secret_access_key": "***"}
        }));
        assert_eq!(f.kind, "aws-iot");
        assert!(f.default);
        assert!(
            f.keys
                .contains(&("region".into(), "eu-west-1".into(), false))
        );
        assert!(
            f.keys
                .contains(&("secret_access_key".into(), String::new(), true))
        );
    }
}
