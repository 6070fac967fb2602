//! SigV4 verification as AWS does it for the `iot` service: the canonical request is rebuilt from
//! what arrived on the wire (double-encoded path, sorted query, the signed headers, the SHA-256 of
//! the body) and signed with the configured secret for the request's access key.

use std::collections::BTreeMap;

use aws_lc_rs::{digest, hmac};
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use time::OffsetDateTime;

use super::state::AwsError;

/// The parts of a request SigV4 covers.
pub(crate) struct Signed<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks the request's signature; returns the access key id that signed it.
pub(crate) fn verify(
    req: &Signed<'_>,
    keys: &BTreeMap<String, String>,
    region: &str,
    now: OffsetDateTime,
) -> Result<String, AwsError> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AwsError::forbidden(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        AwsError::forbidden(
            "IncompleteSignatureException",
            "Only the AWS4-HMAC-SHA256 algorithm is supported.",
        )
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(AwsError::forbidden(
            "IncompleteSignatureException",
            format!(
                "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={auth}"
            ),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, scope_region, service, terminator] = scope[..] else {
        return Err(AwsError::forbidden(
            "IncompleteSignatureException",
            format!("Credential is malformed: {credential}"),
        ));
    };
    let Some(secret) = keys.get(key_id) else {
        return Err(AwsError::forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if scope_region != region {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            format!("Credential should be scoped to a valid region, not '{scope_region}'."),
        ));
    }
    if service != "iot" || terminator != "aws4_request" {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: 'iot', not '{service}'."),
        ));
    }
    let amz_date = header(req.headers, "x-amz-date").ok_or_else(|| {
        AwsError::forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    let when = parse_amz_date(amz_date).ok_or_else(|| {
        AwsError::forbidden(
            "InvalidSignatureException",
            format!("Invalid X-Amz-Date: {amz_date}"),
        )
    })?;
    if !amz_date.starts_with(date) {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP",
        ));
    }
    if (now - when).abs() > time::Duration::minutes(15) {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is now earlier or later than the 15 minute window"
            ),
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            "'Host' must be a signed header",
        ));
    }
    let canonical = canonical_request(req, &names);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/iot/aws4_request\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    k = hmac_sha256(&k, region.as_bytes());
    k = hmac_sha256(&k, b"iot");
    k = hmac_sha256(&k, b"aws4_request");
    let expected = hex::encode(hmac_sha256(&k, string_to_sign.as_bytes()));
    if expected.as_bytes() != signature.as_bytes() {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(key_id.to_owned())
}

fn canonical_request(req: &Signed<'_>, names: &[&str]) -> String {
    let uri = if req.raw_path.is_empty() {
        "/".to_owned()
    } else {
        aws_encode(req.raw_path, true)
    };
    let mut pairs: Vec<(String, String)> = req
        .raw_query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                aws_encode(&percent_decode_str(k).decode_utf8_lossy(), false),
                aws_encode(&percent_decode_str(v).decode_utf8_lossy(), false),
            )
        })
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers = String::new();
    for name in names {
        let values: Vec<String> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| collapse(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{uri}\n{query}\n{headers}\n{}\n{}",
        req.method,
        names.join(";"),
        hex::encode(digest::digest(&digest::SHA256, req.body))
    )
}

/// AWS's URI encoding: everything but unreserved characters (and `/` in paths) as `%XX`.
fn aws_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, data).as_ref().to_vec()
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// Signs a request the way an AWS SDK does (for the mock's own tests and probes).
#[cfg(test)]
pub(crate) fn sign(
    req: &Signed<'_>,
    names: &[&str],
    key_id: &str,
    secret: &str,
    region: &str,
    amz_date: &str,
) -> String {
    let date = &amz_date[..8];
    let canonical = canonical_request(req, names);
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/iot/aws4_request\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    k = hmac_sha256(&k, region.as_bytes());
    k = hmac_sha256(&k, b"iot");
    k = hmac_sha256(&k, b"aws4_request");
    format!(
        "AWS4-HMAC-SHA256 Credential={key_id}/{date}/{region}/iot/aws4_request, SignedHeaders={}, Signature={}",
        names.join(";"),
        hex::encode(hmac_sha256(&k, sts.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([("AKID".to_owned(), "secret".to_owned())])
    }

    #[test]
    fn double_encodes_paths_and_sorts_queries() {
        assert_eq!(
            aws_encode("/things/a%20b%2Fc", true),
            "/things/a%2520b%252Fc"
        );
        let h = HeaderMap::new();
        let r = Signed {
            method: "GET",
            raw_path: "/x",
            raw_query: Some("b=2&a=%3A1"),
            headers: &h,
            body: b"",
        };
        let c = canonical_request(&r, &[]);
        assert!(c.contains("\na=%3A1&b=2\n"), "{c}");
    }

    #[test]
    fn accepts_good_and_rejects_tampered_signatures() {
        let now = OffsetDateTime::now_utc();
        let amz = now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:1".parse().unwrap());
        h.insert("x-amz-date", amz.parse().unwrap());
        let auth = {
            let r = Signed {
                method: "POST",
                raw_path: "/certificate/register-no-ca",
                raw_query: None,
                headers: &h,
                body: b"{}",
            };
            sign(
                &r,
                &["host", "x-amz-date"],
                "AKID",
                "secret",
                "eu-central-1",
                &amz,
            )
        };
        h.insert("authorization", auth.parse().unwrap());
        let r = Signed {
            method: "POST",
            raw_path: "/certificate/register-no-ca",
            raw_query: None,
            headers: &h,
            body: b"{}",
        };
        assert_eq!(verify(&r, &keys(), "eu-central-1", now).unwrap(), "AKID");
        let tampered = Signed { body: b"{ }", ..r };
        let e = verify(&tampered, &keys(), "eu-central-1", now).unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        let e = verify(&r, &keys(), "us-east-1", now).unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        let e = verify(&r, &BTreeMap::new(), "eu-central-1", now).unwrap_err();
        assert_eq!(e.code, "UnrecognizedClientException");
        let e = verify(&r, &keys(), "eu-central-1", now + time::Duration::hours(1)).unwrap_err();
        assert!(e.message.contains("Signature expired"), "{}", e.message);
    }
}
