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
//! The file is `--config FILE`, else `$IDBRIDGE_CONFIG`, else `./idbridge.toml` when present,
//! else the user's `$XDG_CONFIG_HOME/idbridge/idbridge.toml` (`~/.config/idbridge/idbridge.toml`).
//! Without any, and for a target named `demo` that the file does not define, `demo` is the
//! in-process mock cloud, so the first command works on a machine with nothing installed.
//!
//! Every table is strict: an unknown key is an error naming the file, the table and the nearest
//! valid key. Relative paths (`journal = "sqlite:..."`, `ca_file`, `dir`, `signing_key`, the
//! `[trust]` files) are relative to the directory of the config file, not to the current one.
//!
//! ```toml
//! [trust]                              # optional; --trust / --crl flags add to it
//! anchors = ["roots/"]                 # extra trust anchors: PEM/DER files or directories
//! crls = ["crl/infineon.crl"]          # offline CRLs
//! allow_test_roots = false             # the vendors' published test roots (never in production)
//! validity_at = "now"                  # "now", "ignore" or an RFC 3339 time
//! no_builtin_roots = false             # trust only `anchors`
//! stale_crl = "warn"                   # a CRL past its nextUpdate: "warn" or "error"
//! crl_check_seconds = 10               # reload changed CRL files this often at most
//! ```

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
    /// `[trust]`, paths already relative to the config file.
    pub trust: TrustSection,
    /// Every `[targets.NAME]`, uninterpolated (interpolation happens in [`Config::target`], so
    /// an unset variable of another target does not matter).
    targets: BTreeMap<String, toml::Table>,
    /// `[serve]`, uninterpolated (read by `idbridge serve`).
    serve: Option<toml::Table>,
    /// `[service]`, uninterpolated (read by `idbridge serve` and `idbridge service`).
    service: Option<toml::Table>,
}

/// `[trust]`: how certificates are judged, for every command that reads inputs. Command-line
/// flags add anchors and CRLs and can only make it looser with `--allow-test-roots`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// Extra trust anchors: certificate files or directories of them.
    #[serde(default)]
    pub anchors: Vec<PathBuf>,
    /// Offline CRLs (DER or PEM), each signed by a trusted CA.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Accept chains to the vendors' published test roots. Never in production.
    #[serde(default)]
    pub allow_test_roots: bool,
    /// When validity is judged: `now`, `ignore` or an RFC 3339 time.
    #[serde(default)]
    pub validity_at: Option<String>,
    /// Trust only `anchors`, not the built-in vendor roots.
    #[serde(default)]
    pub no_builtin_roots: bool,
    /// A CRL past its `nextUpdate`: `warn` (default) or `error` (refuse the devices of its CA).
    #[serde(default)]
    pub stale_crl: Option<String>,
    /// Seconds between looks at the CRL files for changes (a changed file is reloaded);
    /// default 10, 0 looks at every verification.
    #[serde(default)]
    pub crl_check_seconds: Option<u64>,
}

impl TrustSection {
    /// The trust options this table describes (flags, where a front end has them, go on top).
    /// An error names `validity_at`.
    pub fn options(&self) -> anyhow::Result<idbridge_core::intake::TrustOptions> {
        let mut o = idbridge_core::intake::TrustOptions {
            anchors: self.anchors.clone(),
            crls: self.crls.clone(),
            allow_test_roots: self.allow_test_roots,
            no_builtin: self.no_builtin_roots,
            ..Default::default()
        };
        if let Some(v) = &self.stale_crl {
            o.stale_crl = v
                .parse()
                .map_err(|e| anyhow::anyhow!("[trust] stale_crl = {v:?}: {e}"))?;
        }
        o.crl_check_every = self.crl_check_seconds.map(std::time::Duration::from_secs);
        if let Some(v) = &self.validity_at {
            o.validity = v
                .parse()
                .map_err(|e| anyhow::anyhow!("[trust] validity_at = {v:?}: {e}"))?;
        }
        Ok(o)
    }
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
    /// The config file it came from (for error messages), if any.
    pub file: Option<PathBuf>,
}

/// `[targets.NAME.engine]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Devices per second for the whole target.
    pub rate: Option<f64>,
    /// Calls in flight at the start (and at least).
    pub concurrency: Option<usize>,
    /// Calls in flight the engine may grow to when a quota and the cloud's latency need more.
    pub max_concurrency: Option<usize>,
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
    trust: TrustSection,
    #[serde(default)]
    targets: BTreeMap<String, toml::Table>,
    /// `[serve]`, read by `idbridge serve` (src/serve/config.rs).
    #[serde(default)]
    serve: Option<toml::Table>,
    /// `[service]`, read by `idbridge serve` and `idbridge service` (src/service/mod.rs).
    #[serde(default)]
    service: Option<toml::Table>,
}

/// Keys whose values are file paths, in any target table: made relative to the config file.
const PATH_KEYS: &[&str] = &["ca_file", "dir", "signing_key", "key_file", "cert_file"];

/// Key names whose values `config show` never prints.
const SECRET_WORDS: &[&str] = &[
    "secret",
    "token",
    "password",
    "connection_string",
    "sas",
    "key",
];

impl Config {
    /// Loads `explicit`, else `$IDBRIDGE_CONFIG` (clap passes it as `explicit`), else
    /// `./idbridge.toml` if present, else nothing.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match Self::default_paths().into_iter().find(|p| p.is_file()) {
                Some(p) => p,
                None => return Ok(Config::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(&text, Some(path))
    }

    /// Where a config file is looked for when none is named, in order: `./idbridge.toml`,
    /// then `$XDG_CONFIG_HOME/idbridge/idbridge.toml` (default `~/.config/...`).
    pub fn default_paths() -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from(DEFAULT_FILE)];
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(dir) = xdg {
            v.push(dir.join("idbridge").join(DEFAULT_FILE));
        }
        v
    }

    /// Parses config text. Relative paths are resolved against `path`'s directory.
    pub fn parse(text: &str, path: Option<PathBuf>) -> anyhow::Result<Config> {
        let shown = path
            .as_ref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let file: File = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{shown}: {}", suggest(&e.to_string())))?;
        let base = path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let mut trust = file.trust;
        if let Some(base) = &base {
            for p in trust.anchors.iter_mut().chain(trust.crls.iter_mut()) {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        let journal = file
            .journal
            .map(|j| match (&base, j.strip_prefix("sqlite:")) {
                (Some(base), Some(rest))
                    if !rest.is_empty() && rest != ":memory:" && Path::new(rest).is_relative() =>
                {
                    format!("sqlite:{}", base.join(rest).display())
                }
                _ => j,
            });
        Ok(Config {
            path,
            journal,
            trust,
            targets: file.targets,
            serve: file.serve,
            service: file.service,
        })
    }

    /// The directory relative paths are resolved against (the config file's).
    pub fn base_dir(&self) -> Option<&Path> {
        self.path
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The effective configuration as TOML, secrets redacted: every value whose key names a
    /// secret, and every value that came from `${VAR}`, prints as `<redacted>` (a `${VAR}`
    /// reference prints as itself, which is safe).
    pub fn show(&self) -> anyhow::Result<String> {
        let mut root = toml::Table::new();
        let source = self.path.as_ref().map_or_else(
            || "(none: built-in defaults)".to_owned(),
            |p| p.display().to_string(),
        );
        root.insert(
            "journal".into(),
            toml::Value::String(
                self.journal
                    .clone()
                    .unwrap_or_else(|| DEFAULT_JOURNAL.to_owned()),
            ),
        );
        root.insert("trust".into(), toml::Value::try_from(&self.trust)?);
        let mut targets = toml::Table::new();
        for name in self.target_names() {
            let mut t = match self.targets.get(&name) {
                Some(t) => t.clone(),
                None => {
                    let mut t = toml::Table::new();
                    t.insert("kind".into(), toml::Value::String("mock".into()));
                    t
                }
            };
            if let Some(base) = self.base_dir() {
                resolve_paths(&mut t, base);
            }
            redact_table(&mut t);
            targets.insert(name, toml::Value::Table(t));
        }
        root.insert("targets".into(), toml::Value::Table(targets));
        for (name, table) in [("serve", &self.serve), ("service", &self.service)] {
            if let Some(t) = table {
                let mut t = t.clone();
                redact_table(&mut t);
                root.insert(name.into(), toml::Value::Table(t));
            }
        }
        Ok(format!(
            "# effective configuration, from {source}\n{}",
            toml::to_string_pretty(&root)?
        ))
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
        if let Some(base) = self.base_dir() {
            resolve_paths(&mut table, base);
        }
        let engine = match table.remove("engine") {
            Some(toml::Value::Table(t)) => toml::Value::Table(t)
                .try_into::<EngineSection>()
                .map_err(|e| anyhow::anyhow!("{at}.engine: {}", suggest(e.message())))?,
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
            file: self.path.clone(),
        })
    }
}

/// Makes the relative file paths of a target table relative to `base` (`env:VAR` and inline
/// PEM values are left alone).
fn resolve_paths(t: &mut toml::Table, base: &Path) {
    for key in PATH_KEYS {
        if let Some(toml::Value::String(v)) = t.get_mut(*key)
            && !v.is_empty()
            && !v.starts_with("env:")
            && !v.starts_with("-----")
            && !v.contains("${")
            && Path::new(v.as_str()).is_relative()
        {
            *v = base.join(v.as_str()).display().to_string();
        }
    }
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w)) && !k.ends_with("_name") && !k.ends_with("_file")
}

fn redact_table(t: &mut toml::Table) {
    for (k, v) in t.iter_mut() {
        match v {
            toml::Value::Table(inner) => redact_table(inner),
            toml::Value::String(s)
                if s.trim_start().starts_with("${") && s.trim_end().ends_with('}') => {}
            toml::Value::String(s) if is_secret_key(k) || s.contains("${") => {
                *s = "<redacted>".to_owned();
            }
            _ if is_secret_key(k) => *v = toml::Value::String("<redacted>".to_owned()),
            _ => {}
        }
    }
}

/// Adds "did you mean `x`?" to a serde "unknown field `y`, expected one of ..." message, naming
/// the valid key nearest to the typo (Jaro-Winkler, as cargo and clap do).
pub fn suggest(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_owned();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let expected: Vec<&str> = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    let best = expected
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, k)) => format!("{}; did you mean `{k}`?", message.trim_end()),
        None => message.to_owned(),
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
    fn trust_crl_keys() {
        let c = Config::parse(
            "[trust]\ncrls = [\"ca.crl\"]\nstale_crl = \"error\"\ncrl_check_seconds = 0\n",
            Some("/etc/idbridge/idbridge.toml".into()),
        )
        .unwrap();
        let o = c.trust.options().unwrap();
        assert_eq!(o.crls, vec![PathBuf::from("/etc/idbridge/ca.crl")]);
        assert_eq!(o.stale_crl, idbridge_core::intake::StaleCrlPolicy::Error);
        assert_eq!(o.crl_check_every, Some(std::time::Duration::ZERO));
        let d = Config::parse("[trust]\n", None)
            .unwrap()
            .trust
            .options()
            .unwrap();
        assert_eq!(d.stale_crl, idbridge_core::intake::StaleCrlPolicy::Warn);
        assert_eq!(d.crl_check_every, None, "the verifier's default");
        let bad = Config::parse("[trust]\nstale_crl = \"fatal\"\n", None)
            .unwrap()
            .trust
            .options()
            .unwrap_err();
        assert!(bad.to_string().contains("[trust] stale_crl"), "{bad}");
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
