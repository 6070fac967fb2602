//! The input arguments shared by every command that reads devices (`inspect`, `provision`,
//! `diff` ...): flatten [`InputArgs`] into a command's arguments with `#[command(flatten)]`,
//! then call [`InputArgs::intake_options_with`] with the config's `[trust]` table.

use std::path::PathBuf;

use idbridge::app::config::TrustSection;
use idbridge_core::intake::{
    Format, IntakeOptions, Slot, StaleCrlPolicy, TrustOptions, ValidityPolicy,
};

/// Inputs and how to judge them.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// Input files or directories: PEM, DER, OPTIGA object data or dumps, Infineon Cloud ID
    /// bundles (.7z), Microchip manifests (.json), Espressif CSV, idbridge manifests (.jsonl).
    #[arg(value_name = "INPUT", required = true)]
    pub inputs: Vec<PathBuf>,

    /// Force the input format instead of detecting it from the content: pem, der, optiga,
    /// optiga-dump, cloud-id-bundle, microchip-manifest, espressif-csv, idbridge-manifest.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Infineon certificate slot to import: E0E0 (default), E0E1, E0E2 or all.
    #[arg(long, value_name = "SLOT", default_value = "E0E0")]
    pub slot: Slot,

    /// How certificates are judged.
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl InputArgs {
    /// The intake options these arguments describe (flags only, no `[trust]` table).
    pub fn intake_options(&self) -> IntakeOptions {
        IntakeOptions {
            format: self.format,
            slot: self.slot,
            trust: self.trust.options(),
            ..IntakeOptions::default()
        }
    }

    /// The intake options with the config file's `[trust]` table under the flags.
    pub fn intake_options_with(&self, config: &TrustSection) -> anyhow::Result<IntakeOptions> {
        Ok(IntakeOptions {
            trust: self.trust.options_with(config)?,
            ..self.intake_options()
        })
    }
}

/// Trust flags: shared by the commands that read inputs and by `idbridge serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// Also trust the certificates in FILE (PEM or DER) or in every certificate file of DIR.
    /// Repeatable.
    #[arg(long = "trust", value_name = "FILE|DIR")]
    pub anchors: Vec<PathBuf>,

    /// Accept chains to the published test roots (Infineon Trust M Test CA 000, Microchip
    /// Example Signer FFFF). Their private keys are public: never in production.
    #[arg(long)]
    pub allow_test_roots: bool,

    /// Check revocation against an offline CRL (DER or PEM), signed by a trusted CA.
    /// Repeatable.
    #[arg(long = "crl", value_name = "FILE")]
    pub crl: Vec<PathBuf>,

    /// When certificate validity is judged: `now` (default, or the config's
    /// `[trust] validity_at`), `ignore`, or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub validity_at: Option<ValidityPolicy>,

    /// Trust only the --trust anchors, not the built-in vendor roots.
    #[arg(long)]
    pub no_builtin_roots: bool,

    /// What a CRL past its nextUpdate does: `warn` (default, or the config's
    /// `[trust] stale_crl`) or `error` (refuse the devices of its CA).
    #[arg(long, value_name = "POLICY")]
    pub stale_crl: Option<StaleCrlPolicy>,
}

impl TrustArgs {
    /// The trust options these flags describe.
    pub fn options(&self) -> TrustOptions {
        TrustOptions {
            anchors: self.anchors.clone(),
            allow_test_roots: self.allow_test_roots,
            crls: self.crl.clone(),
            validity: self.validity_at.unwrap_or_default(),
            no_builtin: self.no_builtin_roots,
            stale_crl: self.stale_crl.unwrap_or_default(),
            crl_check_every: None,
        }
    }

    /// The trust options of the config's `[trust]` table with these flags on top: anchors and
    /// CRLs of both, test roots or anchors-only when either says so, `--validity-at` over
    /// `validity_at`.
    pub fn options_with(&self, config: &TrustSection) -> anyhow::Result<TrustOptions> {
        let mut o = config.options()?;
        o.anchors.extend(self.anchors.iter().cloned());
        o.crls.extend(self.crl.iter().cloned());
        o.allow_test_roots |= self.allow_test_roots;
        o.no_builtin |= self.no_builtin_roots;
        if let Some(v) = self.validity_at {
            o.validity = v;
        }
        if let Some(p) = self.stale_crl {
            o.stale_crl = p;
        }
        Ok(o)
    }
}
