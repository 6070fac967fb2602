//! `idbridge bench ingest`: import + verification throughput and peak memory, on synthetic
//! batches shaped like the real ones, beside `openssl speed` measured in the same run.
//!
//! - Infineon-shaped: a PEM bundle of P-256 leaves signed (ecdsa-with-SHA384) by a P-384
//!   intermediate under a P-521 root: one P-384 verification per device.
//! - Microchip-shaped: a Trust Platform manifest (JSON array of ES256 JWS, `x5c` = leaf + signer
//!   CA), P-256 throughout: one JWS and one certificate verification per device.
//!
//! The files are generated first (not timed), then read through the real [`Intake`] exactly as
//! `idbridge inspect` does, twice: verifying on one thread (`workers 1`), then on the pool with
//! one verifier per core (`workers N`, the default everywhere). Peak RSS is the process
//! high-water mark, reset (Linux `/proc/self/clear_refs`) before each run; CPU time is the
//! process's user + system time, so "per CPU-s" is devices per CPU-second. "speedup" is the
//! all-core wall rate over the one-thread wall rate of the same batch.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use idbridge_core::intake::{Format, Intake, IntakeOptions};
use idbridge_core::trust::{TrustOptions, TrustStore, Verifier};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ECDSA_P521_SHA512,
    SerialNumber,
};

/// Arguments of `idbridge bench ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Batch sizes to run (repeatable).
    #[arg(long = "devices", default_values_t = [100_000u64, 1_000_000u64])]
    devices: Vec<u64>,

    /// Which shapes: infineon, microchip or both.
    #[arg(long, default_value = "both")]
    shape: String,

    /// Where to write the generated batches (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,

    /// Seconds per `openssl speed` algorithm (0: skip openssl).
    #[arg(long, default_value_t = 3)]
    openssl_seconds: u32,

    /// Verifier thread counts to run each batch with (repeatable; 0 = one per core).
    #[arg(long = "workers", default_values_t = [1usize, 0usize])]
    workers: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Infineon,
    Microchip,
}

/// Runs the benchmark; prints a table.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || bench(&args)).await?
}

fn bench(args: &Args) -> anyhow::Result<ExitCode> {
    let shapes = match args.shape.as_str() {
        "both" => vec![Shape::Infineon, Shape::Microchip],
        "infineon" => vec![Shape::Infineon],
        "microchip" => vec![Shape::Microchip],
        other => bail!("--shape {other:?}: one of infineon, microchip, both"),
    };
    let openssl = if args.openssl_seconds > 0 {
        openssl_speed(args.openssl_seconds)
    } else {
        None
    };
    match openssl {
        Some((p256, p384)) => println!(
            "openssl speed -seconds {} ecdsap256 ecdsap384: verify/s P-256 {p256:.0}, P-384 {p384:.0}",
            args.openssl_seconds
        ),
        None => println!("openssl speed: not measured (openssl missing or --openssl-seconds 0)"),
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    println!(
        "machine: {} cores available; load average at start: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        super::load_average()
    );
    println!(
        "{:<10} {:>9} {:>7} {:>9} {:>10} {:>12} {:>9} {:>15} {:>8}",
        "shape",
        "devices",
        "workers",
        "wall s",
        "devices/s",
        "dev/CPU-s",
        "peak MiB",
        "verif vs openssl",
        "speedup"
    );
    let pki = Pki::new()?;
    for &shape in &shapes {
        for &n in &args.devices {
            let path = dir.join(match shape {
                Shape::Infineon => format!("infineon-{n}.pem"),
                Shape::Microchip => format!("microchip-{n}.json"),
            });
            let started = Instant::now();
            match shape {
                Shape::Infineon => pki.write_infineon(&path, n)?,
                Shape::Microchip => pki.write_microchip(&path, n)?,
            }
            let generated = started.elapsed();
            // Verifications per device and the openssl figure for the issuer's curve.
            let (per_device, reference) = match shape {
                Shape::Infineon => (1.0, openssl.map(|(_, p384)| p384)),
                Shape::Microchip => (2.0, openssl.map(|(p256, _)| p256)),
            };
            let mut single_rate = None;
            for &workers in &args.workers {
                let m = measure(&pki, shape, &path, n, workers)?;
                let per_cpu = n as f64 / m.cpu_seconds;
                let rate = n as f64 / m.wall_seconds;
                if m.workers == 1 {
                    single_rate = Some(rate);
                }
                println!(
                    "{:<10} {:>9} {:>7} {:>9.1} {:>10.0} {:>12.0} {:>9.1} {:>15} {:>8} (load {})",
                    format!("{shape:?}").to_lowercase(),
                    n,
                    m.workers,
                    m.wall_seconds,
                    rate,
                    per_cpu,
                    m.peak_rss_kib as f64 / 1024.0,
                    reference
                        .map(|r| format!("{:.2}x", per_cpu * per_device / r))
                        .unwrap_or_else(|| "-".to_owned()),
                    match single_rate {
                        Some(s) if m.workers > 1 => format!("{:.2}x", rate / s),
                        _ => "-".to_owned(),
                    },
                    super::load_average(),
                );
            }
            eprintln!(
                "  (generated {n} in {:.1}s; {} bytes; verifications per device: {})",
                generated.as_secs_f64(),
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                match shape {
                    Shape::Infineon => "1 (P-384)",
                    Shape::Microchip => "2 (P-256 JWS + P-256 cert)",
                },
            );
            if args.dir.is_none() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Measurement {
    workers: usize,
    wall_seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn measure(
    pki: &Pki,
    shape: Shape,
    path: &Path,
    n: u64,
    workers: usize,
) -> anyhow::Result<Measurement> {
    let mut store = TrustStore::builtin();
    store.add_anchor_der(&pki.infineon_root_der)?;
    store.add_intermediate_der(&pki.infineon_ca_der)?;
    store.add_anchor_der(&pki.microchip_root_der)?;
    store.add_manifest_signer_der(&pki.signer_der)?;
    let verifier = Arc::new(Verifier::new(store, &TrustOptions::default())?);
    let format = match shape {
        Shape::Infineon => Format::Pem,
        Shape::Microchip => Format::MicrochipManifest,
    };
    let opts = IntakeOptions {
        format: Some(format),
        ..IntakeOptions::default()
    };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let intake = Intake::with_verifier(&[path.to_path_buf()], &opts, verifier)
        .with_context(|| format!("{}", path.display()))?
        .with_workers(workers);
    let workers = intake.workers();
    let mut valid = 0u64;
    let mut other = 0u64;
    let mut first_problem = None;
    for item in intake {
        match item {
            Ok(c) if c.verdict.is_valid() => valid += 1,
            Ok(c) => {
                other += 1;
                first_problem.get_or_insert_with(|| c.verdict.to_string());
            }
            Err(r) => {
                other += 1;
                first_problem.get_or_insert_with(|| r.to_string());
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    if valid != n || other != 0 {
        bail!(
            "{}: {valid} valid of {n}, {other} others (first: {})",
            path.display(),
            first_problem.unwrap_or_default()
        );
    }
    Ok(Measurement {
        workers,
        wall_seconds: wall,
        cpu_seconds: cpu.max(1e-9),
        peak_rss_kib: peak_rss_kib(),
    })
}

/// The synthetic PKIs.
struct Pki {
    infineon_root_der: Vec<u8>,
    infineon_ca: Issuer<'static, KeyPair>,
    infineon_ca_der: Vec<u8>,
    microchip_root_der: Vec<u8>,
    microchip_ca: Issuer<'static, KeyPair>,
    microchip_ca_der: Vec<u8>,
    signer_der: Vec<u8>,
    signer_key: EcdsaKeyPair,
    signer_x5t: String,
    signer_kid: String,
    leaf_key: KeyPair,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let ca = |cn: &str,
                  alg,
                  issuer: Option<&Issuer<'static, KeyPair>>|
         -> anyhow::Result<(Vec<u8>, Issuer<'static, KeyPair>)> {
            let key = KeyPair::generate_for(alg)?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name
                .push(DnType::OrganizationName, "idbridge bench");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2060, 1, 1);
            let cert = match issuer {
                Some(i) => p.signed_by(&key, i)?,
                None => p.self_signed(&key)?,
            };
            Ok((cert.der().to_vec(), Issuer::new(p, key)))
        };
        let (infineon_root_der, infineon_root) =
            ca("Bench ECC Root CA 2", &PKCS_ECDSA_P521_SHA512, None)?;
        let (infineon_ca_der, infineon_ca) = ca(
            "Bench Trust M CA 306",
            &PKCS_ECDSA_P384_SHA384,
            Some(&infineon_root),
        )?;
        let (microchip_root_der, microchip_root) =
            ca("Bench Root CA 002", &PKCS_ECDSA_P256_SHA256, None)?;
        let (microchip_ca_der, microchip_ca) = ca(
            "Bench Signer 2A00",
            &PKCS_ECDSA_P256_SHA256,
            Some(&microchip_root),
        )?;

        let signer_rcgen = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "Bench Manifest Signer");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.use_authority_key_identifier_extension = false;
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let signer_cert = p.self_signed(&signer_rcgen)?;
        let signer_der = signer_cert.der().to_vec();
        let signer_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signer_rcgen.serialize_der(),
        )
        .map_err(|e| anyhow::anyhow!("signer key: {e}"))?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signer_x5t = b64.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &signer_der,
        ));
        let ski = ski_of(&signer_der).context("generated signer has no SKI")?;
        Ok(Pki {
            infineon_root_der,
            infineon_ca,
            infineon_ca_der,
            microchip_root_der,
            microchip_ca,
            microchip_ca_der,
            signer_der,
            signer_key,
            signer_x5t,
            signer_kid: b64.encode(ski),
            leaf_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        })
    }

    fn leaf(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        serial: u64,
        cn: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let mut s = vec![0x1f];
        s.extend_from_slice(&serial.to_be_bytes());
        p.serial_number = Some(SerialNumber::from_slice(&s));
        p.not_before = rcgen::date_time_ymd(2023, 5, 31);
        p.not_after = rcgen::date_time_ymd(2043, 5, 31);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        Ok(p.signed_by(&self.leaf_key, issuer)?.der().to_vec())
    }

    fn write_infineon(&self, path: &Path, n: u64) -> anyhow::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        for i in 0..n {
            let der = self.leaf(&self.infineon_ca, i, &format!("{i:064x}"))?;
            write_pem(&mut out, &der)?;
        }
        out.flush()?;
        Ok(())
    }

    fn write_microchip(&self, path: &Path, n: u64) -> anyhow::Result<()> {
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rng = SystemRandom::new();
        let point = self.leaf_key.public_key_raw();
        let (x, y) = (b64u.encode(&point[1..33]), b64u.encode(&point[33..65]));
        let ca = b64.encode(&self.microchip_ca_der);
        let protected = b64u.encode(format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"JWT","x5t#S256":"{}"}}"#,
            self.signer_kid, self.signer_x5t
        ));
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        out.write_all(b"[\n")?;
        for i in 0..n {
            let uid = format!("0123{i:012x}01");
            let leaf = self.leaf(&self.microchip_ca, i, &format!("sn{}", uid.to_uppercase()))?;
            let payload = b64u.encode(format!(
                r#"{{"version":1,"model":"ATECC608C","partNumber":"BENCH","provisioningTimestamp":"2025-06-01T20:14:53.773Z","uniqueId":"{uid}","publicKeySet":{{"keys":[{{"kid":"0","kty":"EC","crv":"P-256","x":"{x}","y":"{y}","x5c":["{}","{ca}"]}}]}}}}"#,
                b64.encode(&leaf)
            ));
            let signing_input = format!("{protected}.{payload}");
            let sig = self
                .signer_key
                .sign(&rng, signing_input.as_bytes())
                .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
            if i > 0 {
                out.write_all(b",\n")?;
            }
            write!(
                out,
                r#"{{"payload":"{payload}","protected":"{protected}","header":{{"uniqueId":"{uid}"}},"signature":"{}"}}"#,
                b64u.encode(sig.as_ref())
            )?;
        }
        out.write_all(b"\n]\n")?;
        out.flush()?;
        Ok(())
    }
}

fn write_pem(out: &mut impl Write, der: &[u8]) -> std::io::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.write_all(b"-----BEGIN CERTIFICATE-----\n")?;
    for chunk in b64.as_bytes().chunks(64) {
        out.write_all(chunk)?;
        out.write_all(b"\n")?;
    }
    out.write_all(b"-----END CERTIFICATE-----\n")
}

/// The SubjectKeyIdentifier of a DER certificate.
fn ski_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser_lite::ski;
    ski(der)
}

/// Just enough DER walking to find the SKI extension (2.5.29.14) without another dependency:
/// the OID bytes `06 03 55 1D 0E`, then an optional BOOLEAN, then an OCTET STRING wrapping an
/// OCTET STRING.
mod x509_parser_lite {
    pub fn ski(der: &[u8]) -> Option<Vec<u8>> {
        let oid = [0x06, 0x03, 0x55, 0x1D, 0x0E];
        let at = der.windows(oid.len()).position(|w| w == oid)? + oid.len();
        let mut rest = der.get(at..)?;
        if rest.first() == Some(&0x01) {
            rest = rest.get(3..)?;
        }
        // OCTET STRING (extnValue) { OCTET STRING keyIdentifier }
        if rest.first() != Some(&0x04) {
            return None;
        }
        let inner = rest.get(2..)?;
        if inner.first() != Some(&0x04) {
            return None;
        }
        let len = *inner.get(1)? as usize;
        inner.get(2..2 + len).map(<[u8]>::to_vec)
    }
}

/// `openssl speed` verify/s for P-256 and P-384.
fn openssl_speed(seconds: u32) -> Option<(f64, f64)> {
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-seconds",
            &seconds.to_string(),
            "ecdsap256",
            "ecdsap384",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let verify = |curve: &str| {
        text.lines()
            .find(|l| l.contains(curve) && l.contains("ecdsa"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((verify("nistp256")?, verify("nistp384")?))
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, USER_HZ = 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("idbridge-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
