//! `idbridge.toml`: `[targets.NAME]` tables (`kind` plus the connector's keys, and an optional
//! `[targets.NAME.engine]` table for the engine), secrets from the environment with `${VAR}`,
//! and command-line flags on top.
//!
//! ```toml
//! journal = "sqlite:idbridge-journal.sqlite"   # optional; --journal wins
//!
//! [targets.lab]
//! kind = "mock"
//! url = "http://127.0.0.1:8471"
//! allow_http = true
//! token = "${IDBRIDGE_MOCK_TOKEN}"
//!
//! [targets.lab.engine]      # optional; flags win
//! rate = 50                 # devices per second for the whole target
//! concurrency = 8
//! batch_size = 1
//! attempt_timeout_secs = 30
//! max_attempts = 8
//! ```
//!
//! The file is `--config FILE`, else `$IDBRIDGE_CONFIG`, else `./idbridge.toml` when present.
//! Without any, and for a target named `demo` that the file does not define, `demo` is the
//! in-process mock cloud, so the first command works on a machine with nothing installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The default config file, looked for in the current directory.
pub const DEFAULT_FILE: &str = "idbridge.toml";
/// The default journal.
pub const DEFAULT_JOURNAL: &str = "sqlite:idbridge-journal.sqlite";
/// The built-in target.
pub const DEMO: &str = "demo";

/// The loaded configuration. `Debug` shows target names only (tables may hold secrets).
#[derive(Clone, Default)]
pub struct Config {
    /// Where it was read from, if anywhere.
    pub path: Option<PathBuf>,
    /// `journal = "..."`.
    pub journal: Option<String>,
    /// Every `[targets.NAME]`, uninterpolated (interpolation happens in [`Config::target`], so
    /// an unset variable of another target does not matter).
    targets: BTreeMap<String, toml::Table>,
}

/// One target, ready to build. `Debug` shows the keys, never the values.
#[derive(Clone)]
pub struct TargetConfig {
    /// Its name.
    pub name: String,
    /// `kind`.
    pub kind: String,
    /// The connector's keys, `kind` included, `${VAR}` expanded. May hold secrets: never log.
    pub table: toml::Table,
    /// The engine section.
    pub engine: EngineSection,
}

/// `[targets.NAME.engine]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Devices per second for the whole target.
    pub rate: Option<f64>,
    /// Calls in flight.
    pub concurrency: Option<usize>,
    /// Devices per call.
    pub batch_size: Option<usize>,
    /// Seconds one call may take.
    pub attempt_timeout_secs: Option<f64>,
    /// Calls per device before giving up.
    pub max_attempts: Option<u32>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("journal", &self.journal)
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("keys", &self.table.keys().collect::<Vec<_>>())
            .field("engine", &self.engine)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    journal: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, toml::Table>,
    /// `[serve]`, read by `idbridge serve` (src/serve/config.rs).
    #[serde(default, rename = "serve")]
    _serve: Option<toml::Table>,
    /// `[service]`, read by `idbridge serve` and `idbridge service` (src/service/mod.rs).
    #[serde(default, rename = "service")]
    _service: Option<toml::Table>,
}

impl Config {
    /// Loads `explicit`, else `$IDBRIDGE_CONFIG` (clap passes it as `explicit`), else
    /// `./idbridge.toml` if present, else nothing.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                if !p.exists() {
                    return Ok(Config::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(&text, Some(path))
    }

    /// Parses config text.
    pub fn parse(text: &str, path: Option<PathBuf>) -> anyhow::Result<Config> {
        let shown = path
            .as_ref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        Ok(Config {
            path,
            journal: file.journal,
            targets: file.targets,
        })
    }

    /// The names of the configured targets (and `demo`).
    pub fn target_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.targets.keys().cloned().collect();
        if !self.targets.contains_key(DEMO) {
            names.push(DEMO.to_owned());
        }
        names
    }

    /// Target `name`, with `${VAR}` expanded from the environment.
    pub fn target(&self, name: &str) -> anyhow::Result<TargetConfig> {
        self.target_with(name, &|v| std::env::var(v).ok())
    }

    /// Target `name`, with `${VAR}` expanded by `env`.
    pub fn target_with(
        &self,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<TargetConfig> {
        let shown = self
            .path
            .as_ref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let mut table = match self.targets.get(name) {
            Some(t) => t.clone(),
            None if name == DEMO => {
                let mut t = toml::Table::new();
                t.insert("kind".into(), toml::Value::String("mock".into()));
                t
            }
            None => bail!(
                "no target {name:?} in {shown}; known targets: {}",
                self.target_names().join(", ")
            ),
        };
        let at = format!("{shown}: [targets.{name}]");
        interpolate_table(&mut table, env, &at)?;
        let engine = match table.remove("engine") {
            Some(toml::Value::Table(t)) => toml::Value::Table(t)
                .try_into::<EngineSection>()
                .map_err(|e| anyhow::anyhow!("{at}.engine: {e}"))?,
            Some(_) => bail!("{at}: engine must be a table"),
            None => EngineSection::default(),
        };
        let kind = match table.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(_) => bail!("{at}: kind must be a string"),
            None => bail!("{at}: missing kind (\"mock\", \"manifest\", \"aws-iot\" ...)"),
        };
        Ok(TargetConfig {
            name: name.to_owned(),
            kind,
            table,
            engine,
        })
    }
}

fn interpolate_table(
    t: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
) -> anyhow::Result<()> {
    for (k, v) in t.iter_mut() {
        interpolate_value(v, env, &format!("{at} {k}"))?;
    }
    Ok(())
}

fn interpolate_value(
    v: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
) -> anyhow::Result<()> {
    match v {
        toml::Value::String(s) => *s = interpolate(s, env, at)?,
        toml::Value::Array(a) => {
            for x in a {
                interpolate_value(x, env, at)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, env, at)?,
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`; `$${` is a literal `${`. An unset variable is an error naming it (never
/// its value).
pub fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                bail!("{at}: unterminated ${{ in a value");
            };
            let var = &tail[..end];
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                bail!("{at}: bad variable name {var:?} in ${{...}}");
            }
            match env(var) {
                Some(v) => out.push_str(&v),
                None => bail!("{at}: environment variable {var} is not set"),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> Option<String> {
        (v == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("a${TOKEN}b", &env, "x").unwrap(), "as3cretb");
        assert_eq!(
            interpolate("$${TOKEN} $5", &env, "x").unwrap(),
            "${TOKEN} $5"
        );
        let e = interpolate("${NOPE}", &env, "f: [targets.a] token").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f: [targets.a] token: environment variable NOPE is not set"
        );
        assert!(interpolate("${A", &env, "x").is_err());
    }

    #[test]
    fn targets_and_demo() {
        let c = Config::parse(
            r#"
            journal = "sqlite:j.sqlite"
            [targets.lab]
            kind = "mock"
            token = "${TOKEN}"
            [targets.lab.engine]
            rate = 50
            [targets.broken]
            kind = "mock"
            token = "${UNSET}"
            "#,
            Some("idbridge.toml".into()),
        )
        .unwrap();
        let t = c.target_with("lab", &env).unwrap();
        assert_eq!(t.kind, "mock");
        assert_eq!(t.table["token"].as_str(), Some("s3cret"));
        assert!(!t.table.contains_key("engine"));
        assert_eq!(t.engine.rate, Some(50.0));
        assert!(
            !format!("{t:?} {c:?}").contains("s3cret"),
            "Debug shows no secret"
        );
        let e = c.target_with("broken", &env).unwrap_err().to_string();
        assert!(
            e.contains("[targets.broken] token") && e.contains("UNSET"),
            "{e}"
        );
        assert_eq!(c.target_with("demo", &env).unwrap().kind, "mock");
        let e = c.target_with("nope", &env).unwrap_err().to_string();
        assert!(e.contains("lab") && e.contains("demo"), "{e}");
        assert!(
            Config::parse("[targets.x]\nkind = 3", None)
                .unwrap()
                .target("x")
                .is_err()
        );
        assert!(Config::parse("bogus = 1", None).is_err());
    }
}
