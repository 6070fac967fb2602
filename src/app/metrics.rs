//! Counters of a run in the Prometheus text format (`--metrics-listen`, ADR 1700): connector
//! calls by target, API and result (`ok`, `throttled`, `error`) with their total seconds, and devices finished by outcome.
//!
//! A few labelled counters behind one mutex, written out by hand like the service's `/metrics`:
//! the exposition format is a dozen lines of text, and a registry crate would add a second
//! metrics model beside the service's for no gain.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The counters of this process, shared by every target it opens.
pub fn global() -> std::sync::Arc<Metrics> {
    static GLOBAL: std::sync::OnceLock<std::sync::Arc<Metrics>> = std::sync::OnceLock::new();
    std::sync::Arc::clone(GLOBAL.get_or_init(Default::default))
}

/// Counters: connector calls and devices finished.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (target, api, result) → (calls, seconds).
    calls: BTreeMap<(String, &'static str, &'static str), (u64, f64)>,
    /// (target, operation, state or outcome) → devices.
    devices: BTreeMap<(String, String, String), u64>,
}

impl Metrics {
    /// Counts one connector call of `secs` seconds.
    pub fn call(&self, target: &str, api: &'static str, result: &'static str, secs: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .calls
            .entry((target.to_owned(), api, result))
            .or_insert((0, 0.0));
        e.0 += 1;
        e.1 += secs;
    }

    /// Counts one device finished by a job.
    pub fn device(&self, target: &str, operation: &str, outcome: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.devices
            .entry((target.to_owned(), operation.to_owned(), outcome.to_owned()))
            .or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP idbridge_connector_calls_total Connector calls by target, API and result.\n\
             # TYPE idbridge_connector_calls_total counter"
        );
        for ((t, api, res), (n, _)) in &m.calls {
            let _ = writeln!(
                s,
                "idbridge_connector_calls_total{{target=\"{}\",api=\"{api}\",result=\"{res}\"}} {n}",
                escape(t)
            );
        }
        let _ = writeln!(
            s,
            "# HELP idbridge_connector_call_seconds_total Seconds spent in connector calls.\n\
             # TYPE idbridge_connector_call_seconds_total counter"
        );
        for ((t, api, res), (_, secs)) in &m.calls {
            let _ = writeln!(
                s,
                "idbridge_connector_call_seconds_total{{target=\"{}\",api=\"{api}\",result=\"{res}\"}} {secs}",
                escape(t)
            );
        }
        let _ = writeln!(
            s,
            "# HELP idbridge_devices_total Devices finished by target, operation and outcome.\n\
             # TYPE idbridge_devices_total counter"
        );
        for ((t, op, outcome), n) in &m.devices {
            let _ = writeln!(
                s,
                "idbridge_devices_total{{target=\"{}\",operation=\"{op}\",outcome=\"{}\"}} {n}",
                escape(t),
                escape(outcome)
            );
        }
        s
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters() {
        let m = Metrics::default();
        m.call("aws\"x", "register", "ok", 0.5);
        m.call("aws\"x", "register", "ok", 0.25);
        m.device("lab", "provision", "created");
        let s = m.render();
        assert!(
            s.contains("idbridge_connector_calls_total{target=\"aws\\\"x\",api=\"register\",result=\"ok\"} 2"),
            "{s}"
        );
        assert!(s.contains("} 0.75"), "{s}");
        assert!(
            s.contains("idbridge_devices_total{target=\"lab\",operation=\"provision\",outcome=\"created\"} 1"),
            "{s}"
        );
    }
}
