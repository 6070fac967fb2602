//! Shared access signatures as IoT Hub and DPS check them.
//!
//! `Authorization: SharedAccessSignature sr=<sr>&sig=<sig>&se=<se>&skn=<policy>`: fields in any
//! order; `sig` percent-decoded leniently (raw `/`, lower-case hex, and `+` stays `+`);
//! `sig = base64(HMAC-SHA256(base64decode(key), sr_as_sent + "\n" + se))`; `sr`, decoded and
//! lower-cased, must be a segment prefix of `host[:port]/path`; `se` in the future; `skn` a
//! known policy with the permission the operation needs.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::percent_decode_str;

/// A shared access policy of a mock service.
#[derive(Clone)]
pub struct Policy {
    /// Policy name (`skn`), e.g. `iothubowner`.
    pub name: String,
    /// The decoded key.
    pub key: Vec<u8>,
    /// Whether it may write (RegistryWrite / EnrollmentWrite).
    pub write: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused (logged by the mock; the client only sees 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasRefusal {
    /// No Authorization header or not a SAS.
    Missing,
    /// A field is missing or malformed.
    Malformed(&'static str),
    /// `skn` names no policy.
    UnknownPolicy,
    /// The signature does not verify with the policy's key.
    BadSignature,
    /// `se` is in the past.
    Expired,
    /// `sr` is not a prefix of the requested resource.
    WrongResource,
    /// The policy lacks the needed permission.
    Permission,
}

/// Checks `header` for a request to `host` + `path` at unix time `now`.
pub fn verify(
    header: &str,
    policies: &[Policy],
    host: &str,
    path: &str,
    now: u64,
    needs_write: bool,
) -> Result<(), SasRefusal> {
    let rest = header
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasRefusal::Missing)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in rest.split('&') {
        let (k, v) = part.split_once('=').ok_or(SasRefusal::Malformed("field"))?;
        match k.trim() {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            _ => {}
        }
    }
    let sr_raw = sr.ok_or(SasRefusal::Malformed("sr"))?;
    let sig = sig.ok_or(SasRefusal::Malformed("sig"))?;
    let se_raw = se.ok_or(SasRefusal::Malformed("se"))?;
    let skn = skn.ok_or(SasRefusal::Malformed("skn"))?;
    let policy = policies
        .iter()
        .find(|p| p.name == skn)
        .ok_or(SasRefusal::UnknownPolicy)?;
    let sig_bytes = STANDARD
        .decode(percent_decode_str(sig).decode_utf8_lossy().as_bytes())
        .map_err(|_| SasRefusal::Malformed("sig"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &policy.key);
    hmac::verify(&key, format!("{sr_raw}\n{se_raw}").as_bytes(), &sig_bytes)
        .map_err(|_| SasRefusal::BadSignature)?;
    let se: u64 = se_raw.parse().map_err(|_| SasRefusal::Malformed("se"))?;
    if se <= now {
        return Err(SasRefusal::Expired);
    }
    let resource = percent_decode_str(sr_raw)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    let resource = resource.trim_end_matches('/');
    let target = format!("{}{}", host.to_ascii_lowercase(), path.to_ascii_lowercase());
    let prefix_ok = target == resource
        || target
            .strip_prefix(resource)
            .is_some_and(|r| r.starts_with('/'));
    if !prefix_ok {
        return Err(SasRefusal::WrongResource);
    }
    if needs_write && !policy.write {
        return Err(SasRefusal::Permission);
    }
    Ok(())
}

/// Mints a token the way the SDKs do (for the mock's own tests and demos).
pub fn sign(resource: &str, key: &[u8], policy: &str, expiry: u64) -> String {
    let sr = encode(&resource.to_ascii_lowercase());
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let sig = STANDARD.encode(hmac::sign(&k, format!("{sr}\n{expiry}").as_bytes()).as_ref());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={policy}",
        encode(&sig)
    )
}

/// Percent-encoding like JavaScript `encodeURIComponent` minus `!'()*` (Python `quote(safe='')`).
fn encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> Vec<Policy> {
        vec![Policy {
            name: "iothubowner".into(),
            key: STANDARD
                .decode("c2VjcmV0LWZha2Uta2V5LWZvci10ZXN0aW5nLW9ubHkhIQ==")
                .unwrap(),
            write: true,
        }]
    }

    #[test]
    fn captured_python_token_verifies() {
        // Appendix A: Python azure-iot-hub 2.7.0, create device.
        let h = "SharedAccessSignature sr=localhost%3A8443&sig=2Lt8ZH%2BLRGV8tyU9Z64BskQMia3%2BZjXYHva1D1%2Bb9TY%3D&se=1795994157&skn=iothubowner";
        assert_eq!(
            verify(
                h,
                &fake(),
                "localhost:8443",
                "/devices/x",
                1_700_000_000,
                true
            ),
            Ok(())
        );
        // Raw '/' inside sig (observed from Python) still decodes.
        let raw = "SharedAccessSignature sr=localhost%3A8443&sig=VVZjxEd77QiOcwalOzblMhvvNMkk1JjC/%2B2qops8IDY%3D&se=1795994267&skn=iothubowner";
        assert_eq!(
            verify(
                raw,
                &fake(),
                "localhost:8443",
                "/devices",
                1_700_000_000,
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn node_field_order_and_worked_example() {
        let h = "SharedAccessSignature sr=myhub.azure-devices.net&sig=jnkbsmXLvUqQxEruOugGV8eeA2tUvAgsS53R8535gMk%3D&skn=iothubowner&se=1795994157";
        assert_eq!(
            verify(h, &fake(), "myhub.azure-devices.net", "/devices", 1, true),
            Ok(())
        );
        assert_eq!(
            sign(
                "myhub.azure-devices.net",
                &fake()[0].key,
                "iothubowner",
                1795994157
            ),
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=jnkbsmXLvUqQxEruOugGV8eeA2tUvAgsS53R8535gMk%3D&se=1795994157&skn=iothubowner"
        );
    }

    #[test]
    fn refusals() {
        let p = fake();
        let good = sign("localhost:1", &p[0].key, "iothubowner", 100);
        assert_eq!(
            verify(&good, &p, "localhost:1", "/devices", 100, true),
            Err(SasRefusal::Expired)
        );
        assert_eq!(
            verify(&good, &p, "localhost:2", "/devices", 1, true),
            Err(SasRefusal::WrongResource)
        );
        let scoped = sign("localhost:1/devices", &p[0].key, "iothubowner", 100);
        assert_eq!(
            verify(&scoped, &p, "localhost:1", "/devices/a", 1, true),
            Ok(())
        );
        assert_eq!(
            verify(&scoped, &p, "localhost:1", "/devicesx", 1, true),
            Err(SasRefusal::WrongResource)
        );
        let wrong_key = sign("localhost:1", b"other", "iothubowner", 100);
        assert_eq!(
            verify(&wrong_key, &p, "localhost:1", "/", 1, true),
            Err(SasRefusal::BadSignature)
        );
        let unknown = sign("localhost:1", &p[0].key, "nobody", 100);
        assert_eq!(
            verify(&unknown, &p, "localhost:1", "/", 1, true),
            Err(SasRefusal::UnknownPolicy)
        );
        assert_eq!(
            verify("Bearer x", &p, "localhost:1", "/", 1, true),
            Err(SasRefusal::Missing)
        );
    }
}
