//! TLS for mock clouds: a generated test CA, HTTPS server certificates, and a mutual-TLS device
//! endpoint that admits a client only when the mock's own rule (its registry) says so.
//!
//! The device endpoint completes a real TLS 1.2/1.3 handshake with a client certificate (the
//! client proves possession of the key with CertificateVerify), then asks `admit` about that
//! certificate and the SNI. An admitted device reads `CONNACK 0 <name>\n`; a refused one reads
//! `CONNACK 5 not authorized\n` and is disconnected (MQTT's return code 5), which is what a
//! device sees from AWS IoT or IoT Hub when its certificate is unknown or inactive.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A CA generated for one mock cloud run; clients trust its PEM.
pub struct TestCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// What the device endpoint knows about a connecting client.
#[derive(Debug, Clone)]
pub struct DeviceHello {
    /// The client's leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
}

impl TestCa {
    /// Generates a P-256 CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "idbridge mock clouds");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(TestCa {
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what clients put in `ca_file`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), with its key.
    pub fn server_cert(
        &self,
        hosts: &[&str],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("localhost"),
        );
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key))
    }

    /// An HTTPS server configuration for `localhost` and `127.0.0.1`.
    pub fn https_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.server_cert(&["localhost", "127.0.0.1"])?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A mutual-TLS server configuration that requires a client certificate (any issuer: the
    /// device endpoint decides admission after the handshake).
    pub fn mtls_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.server_cert(&["localhost", "127.0.0.1"])?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(AnyClientCert))
            .with_single_cert(chain, key)?;
        Ok(Arc::new(cfg))
    }
}

/// The crypto provider every mock uses (aws-lc-rs: P-521 included).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Requires a client certificate and checks the handshake signature with its key, but leaves
/// admission to the endpoint's registry, as AWS IoT does with multi-account registration.
#[derive(Debug)]
struct AnyClientCert;

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The admission rule of a device endpoint: `Ok(name)` admits, `Err(reason)` refuses.
pub type Admit = Arc<dyn Fn(&DeviceHello) -> Result<String, String> + Send + Sync>;

/// A running device endpoint; stops when dropped.
#[derive(Debug)]
pub struct DeviceEndpoint {
    /// The bound address; devices connect to `localhost:PORT`.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Drop for DeviceEndpoint {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts a mutual-TLS device endpoint on `addr`.
pub async fn device_endpoint(
    addr: &str,
    config: Arc<rustls::ServerConfig>,
    admit: Admit,
) -> std::io::Result<DeviceEndpoint> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (tx, mut rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = rx.changed() => break,
            };
            let acceptor = acceptor.clone();
            let admit = Arc::clone(&admit);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let hello = DeviceHello {
                    cert_der: conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec())
                        .unwrap_or_default(),
                    sni: conn.server_name().map(str::to_owned),
                };
                let line = match admit(&hello) {
                    Ok(name) => format!("CONNACK 0 {name}\n"),
                    Err(reason) => {
                        tracing::debug!(%reason, "device refused");
                        "CONNACK 5 not authorized\n".to_owned()
                    }
                };
                let _ = tls.write_all(line.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(DeviceEndpoint {
        addr: local,
        shutdown: tx,
    })
}

/// What a device saw when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// Admitted, under this name.
    Accepted(String),
    /// Refused (or the handshake failed), with what was seen.
    Refused(String),
}

/// Connects as a device with `cert_pem` (leaf first, then any chain) and `key_pem` (PKCS#8),
/// trusting `ca_pem`, sending `sni` (the endpoint's host name) when given.
pub async fn connect_device(
    addr: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    sni: Option<&str>,
) -> anyhow::Result<Connect> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key in key PEM"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.enable_sni = sni.is_some();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(sni.unwrap_or("localhost").to_owned())?;
    let stream = TcpStream::connect(addr).await?;
    let mut tls = match connector.connect(name, stream).await {
        Ok(t) => t,
        Err(e) => return Ok(Connect::Refused(format!("handshake failed: {e}"))),
    };
    let mut buf = String::new();
    if let Err(e) = tls.read_to_string(&mut buf).await
        && buf.is_empty()
    {
        return Ok(Connect::Refused(format!("connection closed: {e}")));
    }
    let line = buf.trim_end();
    Ok(match line.strip_prefix("CONNACK 0 ") {
        Some(name) => Connect::Accepted(name.to_owned()),
        None => Connect::Refused(line.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn device_endpoint_admits_by_rule() {
        let ca = TestCa::new("test ca").unwrap();
        let allowed_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "device");
        let allowed = p.self_signed(&allowed_key).unwrap();
        let other_key = KeyPair::generate().unwrap();
        let other = p.self_signed(&other_key).unwrap();
        let allowed_der = allowed.der().to_vec();
        let ep = device_endpoint(
            "127.0.0.1:0",
            ca.mtls_config().unwrap(),
            Arc::new(move |h: &DeviceHello| {
                if h.sni.is_none() {
                    return Err("no SNI".into());
                }
                if h.cert_der == allowed_der {
                    Ok("dev1".into())
                } else {
                    Err("unknown".into())
                }
            }),
        )
        .await
        .unwrap();
        let ok = connect_device(
            ep.addr,
            ca.cert_pem(),
            &allowed.pem(),
            &allowed_key.serialize_pem(),
            Some("localhost"),
        )
        .await
        .unwrap();
        assert_eq!(ok, Connect::Accepted("dev1".into()));
        let no_sni = connect_device(
            ep.addr,
            ca.cert_pem(),
            &allowed.pem(),
            &allowed_key.serialize_pem(),
            None,
        )
        .await
        .unwrap();
        assert!(matches!(no_sni, Connect::Refused(_)), "{no_sni:?}");
        let refused = connect_device(
            ep.addr,
            ca.cert_pem(),
            &other.pem(),
            &other_key.serialize_pem(),
            Some("localhost"),
        )
        .await
        .unwrap();
        assert!(matches!(refused, Connect::Refused(_)), "{refused:?}");
    }
}
