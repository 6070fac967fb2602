//! The `mock` target's configuration (`[targets.NAME]` with `kind = "mock"`).

use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;

/// Keys of a `kind = "mock"` target.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// Always `"mock"`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The registry's URL (`idbridge mock-cloud mock` prints it). Absent: a registry is started
    /// in this process, which lives as long as the command (a demo, or a test).
    #[serde(default)]
    pub url: Option<String>,
    /// The bearer token (use `"${IDBRIDGE_MOCK_TOKEN}"`). Default `mock-token`.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Plain `http://` URLs are refused unless this is true (the standalone mock speaks HTTP).
    #[serde(default)]
    pub allow_http: bool,
    /// The registry's quota in calls per second: the engine's default pace. Default 100.
    #[serde(default)]
    pub quota: Option<f64>,
    /// For the in-process registry: the quota it enforces (429 above it). Default none.
    #[serde(default)]
    pub server_quota: Option<u32>,
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("url", &self.url)
            .field("token", &self.token)
            .field("allow_http", &self.allow_http)
            .field("quota", &self.quota)
            .field("server_quota", &self.server_quota)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let c: MockConfig = serde_json::from_str(r#"{"token": "hunter2"}"#).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.token.unwrap().expose_secret(), "hunter2");
    }
}
