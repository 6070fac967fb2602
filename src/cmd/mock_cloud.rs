//! `idbridge mock-cloud <KIND> --listen ADDR`: a mock cloud in the foreground, printing its URL
//! on the first line of stdout, until Ctrl-C or SIGTERM. One `match` on the kind; each mock
//! cloud adds an arm.

use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `idbridge mock-cloud`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which mock cloud: `mock` (the device registry), `aws` (AWS IoT control plane),
    /// `azure` (IoT Hub + DPS), `interop` (a Cloud ID interop receiver), `webhook` (a Standard
    /// Webhooks receiver).
    #[arg(value_name = "KIND")]
    pub kind: String,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    /// Bearer token the registry requires (`mock`).
    #[arg(
        long,
        env = "IDBRIDGE_MOCK_TOKEN",
        default_value = "mock-token",
        hide_env_values = true
    )]
    pub token: String,

    /// Calls per second the cloud accepts before answering 429 (`mock`, `azure`; default
    /// unlimited).
    #[arg(long)]
    pub quota: Option<u32>,

    /// The JWT audience the receiver accepts (`interop`).
    #[arg(long, default_value = "123456789012")]
    pub audience: String,

    /// The sender's P-256 public key, SPKI PEM, that tokens must verify with (`interop`).
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<std::path::PathBuf>,

    /// Answer like Infineon's receivers: no `status`/`deprovision` extensions (`interop`).
    #[arg(long)]
    pub infineon_only: bool,

    /// The Standard Webhooks secret, whsec_... (`webhook`).
    #[arg(long, env = "IDBRIDGE_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Serve HTTPS with a generated CA (`interop`, `webhook`).
    #[arg(long)]
    pub tls: bool,

    /// Write the generated CA (server and device endpoint certificates) here, PEM
    /// (`aws`, `interop`, `webhook`).
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<std::path::PathBuf>,

    /// Device (mutual TLS) endpoint listen address (`aws`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub device_listen: String,

    /// Enforce AWS IoT's default per-API quotas (`aws`).
    #[arg(long)]
    pub default_quotas: bool,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.kind.as_str() {
        "mock" => {
            let registry =
                idbridge_mock_clouds::Registry::new(idbridge_mock_clouds::RegistryConfig {
                    token: args.token.clone(),
                    quota: args.quota,
                });
            let server = registry
                .serve(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            super::announce(&server.url)?;
            super::wait_for_shutdown().await;
            server.stop();
            Ok(ExitCode::SUCCESS)
        }
        "interop" => {
            let key_file = args
                .public_key
                .as_ref()
                .context("mock-cloud interop needs --public-key FILE (the sender's SPKI PEM)")?;
            let key = std::fs::read_to_string(key_file)
                .with_context(|| format!("cannot read {}", key_file.display()))?;
            let state = idbridge_mock_clouds::interop::InteropState::new(
                Some(&args.audience),
                &key,
                args.infineon_only,
            )
            .with_context(|| format!("{}: not an EC public key", key_file.display()))?;
            let mock =
                idbridge_mock_clouds::interop::MockInterop::start(&args.listen, state, args.tls)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
            write_ca(args.ca_out.as_deref(), mock.ca.cert_pem())?;
            super::announce(&mock.server.url)?;
            super::announce(&format!("devices localhost:{}", mock.devices.addr.port()))?;
            super::wait_for_shutdown().await;
            mock.server.stop();
            Ok(ExitCode::SUCCESS)
        }
        "webhook" => {
            let secret = args.secret.as_deref().context(
                "mock-cloud webhook needs --secret whsec_... (or IDBRIDGE_WEBHOOK_SECRET)",
            )?;
            let state = idbridge_mock_clouds::webhook::WebhookState::new(secret)
                .context("--secret must be whsec_<base64>")?;
            let mock =
                idbridge_mock_clouds::webhook::MockWebhook::start(&args.listen, state, args.tls)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
            write_ca(args.ca_out.as_deref(), mock.ca.cert_pem())?;
            super::announce(&mock.url())?;
            super::announce(&format!("devices localhost:{}", mock.devices.addr.port()))?;
            super::wait_for_shutdown().await;
            mock.server.stop();
            Ok(ExitCode::SUCCESS)
        }
        "aws" => {
            // First stdout line: the control-plane URL; second: a JSON line with the region,
            // test keys, device endpoint and SNI.
            idbridge_mock_clouds::aws::run_standalone(
                idbridge_mock_clouds::aws::StandaloneOptions {
                    listen: args.listen.clone(),
                    device_listen: args.device_listen.clone(),
                    ca_file: args.ca_out.clone(),
                    default_quotas: args.default_quotas,
                },
            )
            .await
            .with_context(|| format!("mock AWS IoT on {}", args.listen))?;
            Ok(ExitCode::SUCCESS)
        }
        "azure" => {
            // IoT Hub on --listen's port, DPS and the two device endpoints on the next three.
            // Line 1: the hub URL; line 2: JSON with connection strings, endpoints and the CA.
            use idbridge_mock_clouds::azure::{AzureMock, AzureMockAddrs, AzureMockConfig};
            let mut cfg = AzureMockConfig::default();
            cfg.hub_ops_per_minute = args.quota.map(|q| f64::from(q) * 60.0);
            cfg.dps_ops_per_minute = cfg.hub_ops_per_minute;
            let mock = AzureMock::start_on(&AzureMockAddrs::from_listen(&args.listen)?, cfg)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            super::announce(mock.hub_url())?;
            super::announce(&mock.describe().to_string())?;
            super::wait_for_shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!(
            "unknown mock cloud {other:?} (this build has: mock, aws, azure, interop, webhook)"
        ),
    }
}

fn write_ca(path: Option<&std::path::Path>, pem: &str) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, pem).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
