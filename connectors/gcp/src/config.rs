//! Target configuration (`kind = "gcp-firestore"` or `"gcp-pubsub"`), endpoint resolution and
//! credentials. Nothing here touches the wire: google-cloud-auth signs service-account JWTs
//! locally and only fetches tokens when a request asks for headers.

use std::fmt;
use std::path::{Path, PathBuf};

use google_cloud_auth::credentials::{
    self, Credentials, external_account, impersonated, service_account, user_account,
};
use idbridge_core::{Error, ErrorKind, Result};
use serde::Deserialize;

/// Environment variable naming the Firestore emulator (`host:port`), as Google's clients read it.
pub const FIRESTORE_EMULATOR_HOST: &str = "FIRESTORE_EMULATOR_HOST";
/// Environment variable naming the Pub/Sub emulator (`host:port`), as Google's clients read it.
pub const PUBSUB_EMULATOR_HOST: &str = "PUBSUB_EMULATOR_HOST";
/// Firestore's production endpoint.
pub const FIRESTORE_URL: &str = "https://firestore.googleapis.com";
/// Pub/Sub's production endpoint.
pub const PUBSUB_URL: &str = "https://pubsub.googleapis.com";
/// OAuth scope of Firestore (Datastore) calls.
pub const FIRESTORE_SCOPE: &str = "https://www.googleapis.com/auth/datastore";
/// OAuth scope of Pub/Sub calls.
pub const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";

/// Most writes in one `batchWrite` (the 500-write cap of Firestore write batches).
pub const MAX_BATCH_WRITES: usize = 500;
/// Most messages in one Pub/Sub `publish` ("defined by the API").
pub const MAX_PUBLISH_MESSAGES: usize = 1000;
/// Most bytes in one Pub/Sub `publish` request (10 MB, "defined by the API").
pub const MAX_PUBLISH_BYTES: usize = 10_000_000;

/// A `kind = "gcp-firestore"` target: one document per device in a collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirestoreConfig {
    /// Always `"gcp-firestore"` when present (the engine's target table carries it).
    #[serde(default)]
    pub kind: Option<String>,
    /// The target's name, when present.
    #[serde(default)]
    pub name: Option<String>,
    /// Google Cloud project id; default `$GOOGLE_CLOUD_PROJECT`.
    #[serde(default)]
    pub project: Option<String>,
    /// Firestore database id; default `(default)`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Collection holding one document per device; default `device_allowlist`.
    #[serde(default = "default_collection")]
    pub collection: String,
    /// Credentials JSON (service account key, authorized user, external account for workload
    /// identity federation, impersonation); default: Application Default Credentials.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Base URL; default `http://$FIRESTORE_EMULATOR_HOST` when set, else Google's.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Allow a plain `http://` `endpoint_url` (emulators only).
    #[serde(default)]
    pub allow_http: bool,
    /// Authenticate as the emulator's administrator (`Authorization: Bearer owner`) instead of
    /// with Google credentials. Default: true when the endpoint comes from
    /// `$FIRESTORE_EMULATOR_HOST` and no `credentials_file` is given.
    #[serde(default)]
    pub emulator_admin: Option<bool>,
    /// Writes per `batchWrite`, at most 500 (default).
    #[serde(default = "default_batch_writes")]
    pub batch_size: usize,
    /// Document writes per second (creates and deletes); default 500, Firestore's "500/50/5"
    /// ramp-up starting rate for a new collection.
    #[serde(default = "default_writes_per_second")]
    pub writes_per_second: f64,
    /// Document reads per second (lookup, compare, list pages); default 1,000.
    #[serde(default = "default_reads_per_second")]
    pub reads_per_second: f64,
    /// Backstop timeout of one HTTP call in seconds (the engine's attempt timeout comes first).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

/// A `kind = "gcp-pubsub"` target: `device.authorized` / `device.revoked` events on a topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Always `"gcp-pubsub"` when present.
    #[serde(default)]
    pub kind: Option<String>,
    /// The target's name, when present; part of every idempotency key.
    #[serde(default)]
    pub name: Option<String>,
    /// Google Cloud project id; default `$GOOGLE_CLOUD_PROJECT`.
    #[serde(default)]
    pub project: Option<String>,
    /// The topic id (not the full name).
    pub topic: String,
    /// Credentials JSON; default: Application Default Credentials.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Base URL; default `http://$PUBSUB_EMULATOR_HOST` when set, else Google's.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Allow a plain `http://` `endpoint_url` (emulators only).
    #[serde(default)]
    pub allow_http: bool,
    /// Send no credentials (the emulator ignores them). Default: true when the endpoint comes
    /// from `$PUBSUB_EMULATOR_HOST` and no `credentials_file` is given.
    #[serde(default)]
    pub emulator: Option<bool>,
    /// Messages per `publish`, at most 1,000 (default).
    #[serde(default = "default_batch_messages")]
    pub batch_size: usize,
    /// Bytes per `publish` request, at most 10,000,000; default 9,000,000 (room for the JSON
    /// envelope and base64).
    #[serde(default = "default_publish_bytes")]
    pub max_request_bytes: usize,
    /// `publish` requests per second; default 100.
    #[serde(default = "default_publishes_per_second")]
    pub publishes_per_second: f64,
    /// Backstop timeout of one HTTP call in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

/// How requests authenticate. `Debug` never shows a credential.
#[derive(Clone)]
pub enum Auth {
    /// Headers from google-cloud-auth (`Authorization: Bearer …`, quota project).
    Google(Credentials),
    /// The emulator's administrator convention, `Authorization: Bearer owner`.
    EmulatorAdmin,
    /// No credentials (the Pub/Sub emulator ignores them).
    None,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::Google(_) => "Auth::Google(***)",
            Auth::EmulatorAdmin => "Auth::EmulatorAdmin",
            Auth::None => "Auth::None",
        })
    }
}

/// A resolved endpoint and credentials.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The project id.
    pub project: String,
    /// Base URL without a trailing `/`.
    pub base_url: String,
    /// How to authenticate.
    pub auth: Auth,
}

impl FirestoreConfig {
    /// A config for `project` with every default.
    pub fn new(project: &str) -> Self {
        FirestoreConfig {
            kind: None,
            name: None,
            project: Some(project.to_owned()),
            database: default_database(),
            collection: default_collection(),
            credentials_file: None,
            endpoint_url: None,
            allow_http: false,
            emulator_admin: None,
            batch_size: default_batch_writes(),
            writes_per_second: default_writes_per_second(),
            reads_per_second: default_reads_per_second(),
            timeout_secs: default_timeout(),
        }
    }

    /// Checks the values and resolves endpoint and credentials.
    pub fn resolve(&self) -> Result<Resolved> {
        check_kind(self.kind.as_deref(), "gcp-firestore")?;
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_WRITES {
            return Err(config_err(format!(
                "`batch_size` must be 1..={MAX_BATCH_WRITES}, not {}",
                self.batch_size
            )));
        }
        check_rate(self.writes_per_second, "writes_per_second")?;
        check_rate(self.reads_per_second, "reads_per_second")?;
        check_segment(&self.database, "database")?;
        check_segment(&self.collection, "collection")?;
        resolve(
            self.project.as_deref(),
            self.endpoint_url.as_deref(),
            self.allow_http,
            FIRESTORE_EMULATOR_HOST,
            FIRESTORE_URL,
            self.credentials_file.as_deref(),
            self.emulator_admin,
            Auth::EmulatorAdmin,
            FIRESTORE_SCOPE,
        )
    }
}

impl PubSubConfig {
    /// A config for `topic` in `project` with every default.
    pub fn new(project: &str, topic: &str) -> Self {
        PubSubConfig {
            kind: None,
            name: None,
            project: Some(project.to_owned()),
            topic: topic.to_owned(),
            credentials_file: None,
            endpoint_url: None,
            allow_http: false,
            emulator: None,
            batch_size: default_batch_messages(),
            max_request_bytes: default_publish_bytes(),
            publishes_per_second: default_publishes_per_second(),
            timeout_secs: default_timeout(),
        }
    }

    /// Checks the values and resolves endpoint and credentials.
    pub fn resolve(&self) -> Result<Resolved> {
        check_kind(self.kind.as_deref(), "gcp-pubsub")?;
        if self.batch_size == 0 || self.batch_size > MAX_PUBLISH_MESSAGES {
            return Err(config_err(format!(
                "`batch_size` must be 1..={MAX_PUBLISH_MESSAGES}, not {}",
                self.batch_size
            )));
        }
        if self.max_request_bytes < 64 * 1024 || self.max_request_bytes > MAX_PUBLISH_BYTES {
            return Err(config_err(format!(
                "`max_request_bytes` must be 65536..={MAX_PUBLISH_BYTES}"
            )));
        }
        check_rate(self.publishes_per_second, "publishes_per_second")?;
        check_segment(&self.topic, "topic")?;
        resolve(
            self.project.as_deref(),
            self.endpoint_url.as_deref(),
            self.allow_http,
            PUBSUB_EMULATOR_HOST,
            PUBSUB_URL,
            self.credentials_file.as_deref(),
            self.emulator,
            Auth::None,
            PUBSUB_SCOPE,
        )
    }
}

#[allow(clippy::too_many_arguments)] // one private resolver shared by both kinds
fn resolve(
    project: Option<&str>,
    endpoint_url: Option<&str>,
    allow_http: bool,
    emulator_env: &str,
    google_url: &str,
    credentials_file: Option<&Path>,
    emulator_flag: Option<bool>,
    emulator_auth: Auth,
    scope: &str,
) -> Result<Resolved> {
    let project = match project {
        Some(p) => p.to_owned(),
        None => std::env::var("GOOGLE_CLOUD_PROJECT")
            .map_err(|_| config_err("`project` is not set and neither is $GOOGLE_CLOUD_PROJECT"))?,
    };
    check_segment(&project, "project")?;
    let (base_url, from_emulator_env) = match endpoint_url {
        Some(url) => {
            check_url(url, allow_http)?;
            (url.trim_end_matches('/').to_owned(), false)
        }
        None => match std::env::var(emulator_env) {
            Ok(host) if !host.trim().is_empty() => {
                let url = format!("http://{}", host.trim());
                url::Url::parse(&url).map_err(|e| {
                    config_err(format!("${emulator_env} {host:?} is not host:port: {e}"))
                })?;
                (url, true)
            }
            _ => (google_url.to_owned(), false),
        },
    };
    let emulator = emulator_flag.unwrap_or(from_emulator_env && credentials_file.is_none());
    let auth = if emulator {
        emulator_auth
    } else {
        Auth::Google(credentials(credentials_file, scope)?)
    };
    Ok(Resolved {
        project,
        base_url,
        auth,
    })
}

/// Credentials from a JSON file by its `type`, else Application Default Credentials.
fn credentials(file: Option<&Path>, scope: &str) -> Result<Credentials> {
    let Some(path) = file else {
        return credentials::Builder::default()
            .with_scopes([scope])
            .build()
            .map_err(|e| {
                config_err(format!(
                    "no `credentials_file` and no Application Default Credentials \
                     (set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`): {e}"
                ))
            });
    };
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_err(format!("`credentials_file` {shown}: cannot read: {e}")))?;
    // Never echo the content: it holds a private key or a refresh token.
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        config_err(format!(
            "`credentials_file` {shown}: not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let kind = json.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let built = match kind {
        "service_account" => service_account::Builder::new(json)
            .with_access_specifier(service_account::AccessSpecifier::from_scopes([scope]))
            .build(),
        "authorized_user" => user_account::Builder::new(json)
            .with_scopes([scope])
            .build(),
        "external_account" => external_account::Builder::new(json)
            .with_scopes([scope])
            .build(),
        "impersonated_service_account" => impersonated::Builder::new(json)
            .with_scopes([scope])
            .build(),
        other => {
            return Err(config_err(format!(
                "`credentials_file` {shown}: unsupported credential type {other:?} \
                 (service_account, authorized_user, external_account, impersonated_service_account)"
            )));
        }
    };
    built.map_err(|e| config_err(format!("`credentials_file` {shown}: {e}")))
}

fn check_kind(kind: Option<&str>, want: &str) -> Result<()> {
    match kind {
        Some(k) if k != want => Err(config_err(format!("kind {k:?} is not {want:?}"))),
        _ => Ok(()),
    }
}

fn check_rate(v: f64, key: &str) -> Result<()> {
    if v.is_nan() || v <= 0.0 {
        return Err(config_err(format!("`{key}` must be positive")));
    }
    Ok(())
}

/// A path segment of a resource name: non-empty, no `/`, no spaces.
fn check_segment(v: &str, key: &str) -> Result<()> {
    if v.is_empty() || v.contains('/') || v.chars().any(char::is_whitespace) {
        return Err(config_err(format!(
            "`{key}` {v:?} must be a non-empty id without `/` or spaces"
        )));
    }
    Ok(())
}

fn check_url(url: &str, allow_http: bool) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| config_err(format!("`endpoint_url` {url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(config_err(format!(
            "`endpoint_url` {url:?} is plain http; set `allow_http = true` for an emulator only"
        ))),
        other => Err(config_err(format!(
            "`endpoint_url` {url:?}: unsupported scheme {other}"
        ))),
    }
}

pub(crate) fn config_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::ConfigInvalid, msg).with_operation("configure")
}

fn default_database() -> String {
    "(default)".to_owned()
}
fn default_collection() -> String {
    "device_allowlist".to_owned()
}
fn default_batch_writes() -> usize {
    MAX_BATCH_WRITES
}
fn default_writes_per_second() -> f64 {
    500.0
}
fn default_reads_per_second() -> f64 {
    1000.0
}
fn default_batch_messages() -> usize {
    MAX_PUBLISH_MESSAGES
}
fn default_publish_bytes() -> usize {
    9_000_000
}
fn default_publishes_per_second() -> f64 {
    100.0
}
fn default_timeout() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(json: &str) -> FirestoreConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn explicit_http_endpoint_needs_allow_http() {
        let cfg =
            fs(r#"{"project":"p","endpoint_url":"http://127.0.0.1:1","emulator_admin":true}"#);
        let e = cfg.resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(e.to_string().contains("allow_http"), "{e}");
        let mut ok = cfg.clone();
        ok.allow_http = true;
        let r = ok.resolve().unwrap();
        assert_eq!(r.base_url, "http://127.0.0.1:1");
        assert!(matches!(r.auth, Auth::EmulatorAdmin));
    }

    #[test]
    fn batch_size_is_bounded_by_the_api() {
        let e = fs(r#"{"project":"p","batch_size":501,"emulator_admin":true}"#)
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
        let e = serde_json::from_str::<PubSubConfig>(
            r#"{"project":"p","topic":"t","batch_size":1001,"emulator":true}"#,
        )
        .unwrap()
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("batch_size"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_ids_are_refused() {
        assert!(serde_json::from_str::<FirestoreConfig>(r#"{"projekt":"p"}"#).is_err());
        let e = fs(r#"{"project":"p","collection":"a/b","emulator_admin":true}"#)
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("collection"), "{e}");
    }

    #[test]
    fn credentials_file_errors_name_the_file_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        std::fs::write(
            &path,
            "{\"type\":\"service_account\",\"private_key\":\"SECRETKEY",
        )
        .unwrap();
        let mut cfg = FirestoreConfig::new("p");
        cfg.credentials_file = Some(path.clone());
        let e = cfg.resolve().unwrap_err();
        let s = e.to_string();
        assert!(s.contains("key.json"), "{s}");
        assert!(!s.contains("SECRETKEY"), "secret leaked: {s}");
        std::fs::write(&path, r#"{"type":"gdch_service_account"}"#).unwrap();
        let e = cfg.resolve().unwrap_err();
        assert!(e.to_string().contains("unsupported credential type"), "{e}");
    }

    #[test]
    fn auth_debug_hides_credentials() {
        assert_eq!(format!("{:?}", Auth::EmulatorAdmin), "Auth::EmulatorAdmin");
    }
}
