//! The console's session and CSRF protection.
//!
//! The session is the account token itself, kept by the browser in a cookie that scripts cannot
//! read (`HttpOnly`), that is never sent by another site's request (`SameSite=Strict`), scoped
//! to `/console`, and `Secure` when the service runs TLS. Nothing is kept on the server, so a
//! restart or a second service instance does not sign anyone out, and every request is judged by
//! the service API exactly as an API call with that token would be.
//!
//! Every form carries a CSRF token: an HMAC of the session under a key made at start-up.
//! The sign-in form, before any session, uses a random pre-session cookie the same way
//! (double submit). Tokens compare in constant time.

use aws_lc_rs::{constant_time, hmac, rand};
use axum::http::{HeaderMap, HeaderValue, header};

/// Name of the session cookie (holds the account token).
pub const SESSION_COOKIE: &str = "idbridge_session";
/// Name of the pre-session cookie of the sign-in form.
pub const LOGIN_COOKIE: &str = "idbridge_login";

/// The per-process CSRF key and cookie policy.
pub struct Sessions {
    key: hmac::Key,
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// A fresh random CSRF key; `secure` marks cookies `Secure` (the service runs TLS).
    pub fn new(secure: bool) -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
        Ok(Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            secure,
        })
    }

    /// The account token of the request's session cookie, if any.
    pub fn token(&self, headers: &HeaderMap) -> Option<String> {
        cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty() && t.len() <= 4096)
    }

    /// The CSRF token for forms of the session `token`.
    pub fn csrf_for(&self, token: &str) -> String {
        self.mac("session", token)
    }

    /// Whether `presented` is the CSRF token of the session `token`.
    pub fn check_csrf(&self, token: &str, presented: &str) -> bool {
        let expected = self.csrf_for(token);
        constant_time::verify_slices_are_equal(expected.as_bytes(), presented.as_bytes()).is_ok()
    }

    /// A new pre-session nonce for the sign-in form: (cookie header, form token).
    pub fn login_nonce(&self) -> anyhow::Result<(HeaderValue, String)> {
        let mut bytes = [0u8; 24];
        rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
        let nonce = hex::encode(bytes);
        let form = self.mac("login", &nonce);
        let cookie = self.cookie(LOGIN_COOKIE, &nonce, Some(600))?;
        Ok((cookie, form))
    }

    /// Whether the sign-in form's token matches the request's pre-session cookie.
    pub fn check_login(&self, headers: &HeaderMap, presented: &str) -> bool {
        let Some(nonce) = cookie(headers, LOGIN_COOKIE) else {
            return false;
        };
        let expected = self.mac("login", &nonce);
        constant_time::verify_slices_are_equal(expected.as_bytes(), presented.as_bytes()).is_ok()
    }

    /// `Set-Cookie` starting a session with `token`.
    pub fn start(&self, token: &str) -> anyhow::Result<HeaderValue> {
        self.cookie(SESSION_COOKIE, token, None)
    }

    /// `Set-Cookie` ending the session (and the pre-session cookie).
    pub fn end(&self, name: &str) -> anyhow::Result<HeaderValue> {
        self.cookie(name, "", Some(0))
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u32>) -> anyhow::Result<HeaderValue> {
        if !value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            anyhow::bail!("a token must be printable ASCII without ';' or ','");
        }
        let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
        if self.secure {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        Ok(HeaderValue::from_str(&c)?)
    }

    fn mac(&self, purpose: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        hex::encode(ctx.sign().as_ref())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with_cookie(c: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(c).unwrap());
        h
    }

    #[test]
    fn csrf_binds_to_the_session_and_the_process() {
        let s = Sessions::new(false).unwrap();
        let t = s.csrf_for("tok-a");
        assert!(s.check_csrf("tok-a", &t));
        assert!(!s.check_csrf("tok-b", &t));
        assert!(!s.check_csrf("tok-a", ""));
        assert!(!Sessions::new(false).unwrap().check_csrf("tok-a", &t));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_with_tls() {
        let plain = Sessions::new(false).unwrap().start("abc").unwrap();
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = Sessions::new(true).unwrap().start("abc").unwrap();
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
        assert!(Sessions::new(false).unwrap().start("a;b").is_err());
    }

    #[test]
    fn login_nonce_is_double_submit() {
        let s = Sessions::new(false).unwrap();
        let (cookie_header, form) = s.login_nonce().unwrap();
        let nonce = cookie_header
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert!(s.check_login(&with_cookie(&nonce), &form));
        assert!(!s.check_login(&HeaderMap::new(), &form));
        assert!(!s.check_login(&with_cookie("idbridge_login=other"), &form));
    }

    #[test]
    fn reads_the_session_cookie() {
        let s = Sessions::new(false).unwrap();
        let h = with_cookie("a=1; idbridge_session=tok; b=2");
        assert_eq!(s.token(&h).as_deref(), Some("tok"));
        assert_eq!(s.token(&HeaderMap::new()), None);
    }
}
