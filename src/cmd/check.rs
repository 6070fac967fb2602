//! `idbridge check --target NAME`: before a run, a checklist of what the run needs from the
//! target: configuration, credentials, permissions (AWS: each action the connector calls,
//! probed without changing anything), the policy / thing type / group / hub, the quotas the
//! engine will pace to, and the device endpoint. Exit 0 when nothing failed, 1 otherwise, 2 when
//! the configuration cannot be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use idbridge_core::engine::Caller;
use serde::Serialize;

use idbridge::app::{Config, EngineOverrides};

/// Arguments of `idbridge check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target: a `[targets.NAME]` of the config file, or `demo`.
    #[arg(long, short = 't', value_name = "NAME")]
    target: String,

    /// The config file (default: ./idbridge.toml, else ~/.config/idbridge/idbridge.toml).
    #[arg(long, env = "IDBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Output: the checklist as a table, or one JSON document.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `config`, `credentials`, `permission`, `resource`, `quota`, `endpoint`, `target`.
    pub group: &'static str,
    /// What was checked.
    pub name: String,
    /// `ok`, `FAIL`, `warn`, `info`, `skip`.
    pub status: &'static str,
    /// What was seen and what to do.
    pub detail: String,
}

/// Runs `check`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let target = config.target(&args.target)?;
    let mut items = vec![];
    match idbridge::app::targets::validate(&target) {
        Ok(()) => items.push(Item {
            group: "config",
            name: format!("[targets.{}] kind = {:?}", target.name, target.kind),
            status: "ok",
            detail: "every key known and valid".into(),
        }),
        Err(e) => {
            items.push(Item {
                group: "config",
                name: format!("[targets.{}]", target.name),
                status: "FAIL",
                detail: format!("{e:#}"),
            });
            return finish(&items, args.output);
        }
    }
    items.extend(target_checks(&target).await);
    finish(&items, args.output)
}

/// The checks of one target, by kind: AWS runs its full preflight; every other kind its
/// connector's health check (Azure: a registry read; mock and http kinds: the service answers),
/// made through the engine's call path with the target's `[targets.NAME.engine]` settings:
/// paced, timed, and retried while the answer is temporary (a throttle, a 503).
async fn target_checks(target: &idbridge::app::TargetConfig) -> Vec<Item> {
    #[cfg(feature = "aws-iot")]
    if target.kind == "aws-iot" {
        let cfg = match idbridge::app::targets::connector_config::<idbridge_aws_iot::AwsIotConfig>(
            target,
        ) {
            Ok(c) => c,
            Err(e) => return vec![fail("config", "aws-iot", format!("{e:#}"))],
        };
        return match idbridge_aws_iot::AwsIot::connect(cfg).await {
            Ok(c) => c
                .preflight()
                .await
                .into_iter()
                .map(|i| Item {
                    group: i.group,
                    name: i.name,
                    status: i.status.as_str(),
                    detail: i.detail,
                })
                .collect(),
            Err(e) => vec![fail("credentials", "AWS configuration", e.to_string())],
        };
    }
    let connector = match idbridge::app::targets::build(target).await {
        Ok(c) => c,
        Err(e) => return vec![fail("target", &target.kind, format!("{e:#}"))],
    };
    let info = connector.info();
    let opts = match EngineOverrides::default().options(target) {
        Ok(o) => o,
        Err(e) => return vec![fail("config", "engine", format!("{e:#}"))],
    };
    let mut items = vec![];
    match Caller::new(connector, &opts).health_check().await {
        Ok(()) => items.push(Item {
            group: "credentials",
            name: format!("{} health check", info.kind),
            status: "ok",
            detail: "the service answered an authenticated read".into(),
        }),
        Err(e) => items.push(fail(
            if e.kind() == idbridge_core::ErrorKind::PermissionDenied {
                "permission"
            } else {
                "credentials"
            },
            &format!("{} health check", info.kind),
            e.to_string(),
        )),
    }
    for q in &info.quotas {
        items.push(Item {
            group: "quota",
            name: q.api.clone(),
            status: "info",
            detail: format!("{}/s", q.per_second),
        });
    }
    items
}

fn fail(group: &'static str, name: &str, detail: String) -> Item {
    Item {
        group,
        name: name.to_owned(),
        status: "FAIL",
        detail,
    }
}

fn finish(items: &[Item], output: Output) -> anyhow::Result<ExitCode> {
    let failed = items.iter().filter(|i| i.status == "FAIL").count();
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(
                &mut w,
                &serde_json::json!({"ok": failed == 0, "failed": failed, "checks": items}),
            )?;
            writeln!(w)?;
        }
        Output::Table => {
            for i in items {
                writeln!(
                    w,
                    "[{:<4}] {:<11} {:<36} {}",
                    i.status, i.group, i.name, i.detail
                )?;
            }
            if failed == 0 {
                writeln!(w, "all checks passed")?;
            } else {
                writeln!(w, "{failed} check(s) failed")?;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
