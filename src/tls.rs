//! TLS of `idbridge serve` (rustls): the certificate chain and key come from files and are
//! read again on SIGHUP (a failed reload keeps the running certificate and logs why); with
//! `client_ca` every caller must present a certificate chaining to it (mutual TLS).
//!
//! ```toml
//! [serve.tls]
//! cert = "server-chain.pem"     # leaf first, then intermediates
//! key = "server-key.pem"        # PKCS#8, SEC1 or PKCS#1 PEM
//! # client_ca = "callers-ca.pem"  # mutual TLS: callers need a certificate from this CA
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// Largest certificate or key file read, bytes.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// `[serve.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates callers' certificates must chain to (mutual TLS); none: no client
    /// certificate asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Resolves relative paths against `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut self.client_ca
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }
}

/// The server's TLS configuration, swappable while serving.
pub struct TlsReloader {
    cfg: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads the files; fails naming the file that is missing or wrong.
    pub fn new(cfg: TlsConfig) -> anyhow::Result<Self> {
        let current = RwLock::new(Arc::new(build(&cfg)?));
        Ok(TlsReloader { cfg, current })
    }

    /// Reads the files again; on failure the running configuration stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(build(&self.cfg)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// An acceptor over the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let cfg = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        TlsAcceptor::from(cfg)
    }

    /// Whether callers must present a certificate.
    pub fn mutual(&self) -> bool {
        self.cfg.client_ca.is_some()
    }
}

/// Reloads `tls` on every SIGHUP until the process ends (unix only).
pub fn reload_on_sighup(tls: Arc<TlsReloader>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: TLS files will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "SIGHUP: TLS reload failed; still serving the previous certificate"
                ),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = tls;
}

fn build(cfg: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(&cfg.cert)?;
    let key_text = read_capped(&cfg.key)?;
    // The key's bytes never reach an error message.
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|_| {
        anyhow::anyhow!(
            "TLS key file {}: no PEM private key (PKCS#8, SEC1 or PKCS#1) in it",
            cfg.key.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("client CA file {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("client CA file {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "TLS certificate {} and key {} do not go together",
            cfg.cert.display(),
            cfg.key.display()
        )
    })?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(sc)
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text = read_capped(path)?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: bad PEM: {e}", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no CERTIFICATE block", path.display());
    }
    Ok(chain)
}

fn read_capped(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_PEM_FILE {
        anyhow::bail!("{}: larger than {MAX_PEM_FILE} bytes", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
