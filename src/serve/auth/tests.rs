use idbridge_mock_clouds::interop::{InteropSender, TokenKind};
use serde_json::json;

use super::*;

const AUD: &str = "123456789012";

fn bearer(t: &str) -> Vec<u8> {
    format!("Bearer {t}").into_bytes()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn verifier(s: &InteropSender, policy: IssuerPolicy, leeway: u64) -> TokenVerifier {
    TokenVerifier::single(
        s.issuer(),
        parse_keys(&s.public_key_pem()).unwrap(),
        policy,
        AUD,
        leeway,
    )
    .unwrap()
}

fn reason(r: Result<Grant, Refusal>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(r) => r.reason,
    }
}

/// The JWT matrix: only the first is accepted; every refusal is Infineon's 401 text.
#[test]
fn jwt_matrix_pem_and_jwks() {
    let s = InteropSender::new(AUD).unwrap();
    for keys in [
        parse_keys(&s.public_key_pem()).unwrap(),
        parse_keys(&s.jwks()).unwrap(),
    ] {
        let v = TokenVerifier::single(s.issuer(), keys, IssuerPolicy::default(), AUD, 5).unwrap();
        let g = v.check(Some(&bearer(&s.token(TokenKind::Valid)))).unwrap();
        assert_eq!(&*g.issuer, "cirrent");
        assert!(g.allows(Scope::Provision) && g.allows(Scope::Status));
        assert!(
            !g.allows(Scope::Deprovision),
            "deprovision is off by default"
        );
        for k in [
            TokenKind::WrongAudience,
            TokenKind::Expired,
            TokenKind::OtherKey,
            TokenKind::AlgNone,
            TokenKind::Hs256WithPublicKey,
            TokenKind::YearLong,
            TokenKind::NoIssuer,
            TokenKind::NoJti,
        ] {
            let r = v.check(Some(&bearer(&s.token(k))));
            assert_eq!(
                r.as_ref().map_err(|e| e.message),
                Err(msg::CANNOT_VERIFY),
                "{k:?} must be refused"
            );
        }
        assert_eq!(v.check(None).unwrap_err().message, msg::MISSING);
        assert_eq!(v.check(Some(b"Bearer")).unwrap_err().message, msg::INVALID);
        assert_eq!(
            v.check(Some(b"Bearer a b")).unwrap_err().message,
            msg::INVALID
        );
        assert_eq!(
            v.check(Some(
                format!("Basic {}", s.token(TokenKind::Valid)).as_bytes()
            ))
            .unwrap_err()
            .message,
            msg::NOT_BEARER
        );
        assert_eq!(
            v.check(Some(b"Bearer not.a.jwt")).unwrap_err().message,
            msg::CANNOT_VERIFY
        );
        assert_eq!(
            v.check(Some(b"bearer \xff\xfe")).unwrap_err().message,
            msg::INVALID
        );
    }
}

#[test]
fn a_replayed_token_is_refused_until_it_expires() {
    let s = InteropSender::new(AUD).unwrap();
    let v = verifier(&s, IssuerPolicy::default(), 5);
    let t = s.token(TokenKind::Valid);
    assert!(v.check(Some(&bearer(&t))).is_ok());
    assert_eq!(
        reason(v.check(Some(&bearer(&t)))),
        "replayed token (jti already used)"
    );
    // A fresh jti passes.
    assert!(v.check(Some(&bearer(&s.token(TokenKind::Valid)))).is_ok());
    // After expiry + leeway the token is refused as expired (the cache no longer needs it).
    assert_eq!(
        reason(v.check_at(Some(&bearer(&t)), now() + 400)),
        "expired"
    );
}

#[test]
fn replay_cache_forgets_expired_tokens_and_refuses_when_full() {
    let s = InteropSender::new(AUD).unwrap();
    let v = verifier(&s, IssuerPolicy::default(), 0).with_replay_capacity(2);
    let t0 = now();
    let mint = |iat: i64, jti: &str| {
        bearer(&s.sign_claims(
            &json!({"iss": "cirrent", "aud": AUD, "iat": iat, "exp": iat + 60, "jti": jti}),
        ))
    };
    assert!(v.check_at(Some(&mint(t0, "a")), t0).is_ok());
    assert!(v.check_at(Some(&mint(t0, "b")), t0).is_ok());
    assert_eq!(
        reason(v.check_at(Some(&mint(t0, "c")), t0)),
        "replay cache full: token refused rather than unchecked"
    );
    // Two minutes later a and b have expired: their entries are dropped, room again.
    let later = t0 + 120;
    assert!(v.check_at(Some(&mint(later, "c")), later).is_ok());
    // `a` may be reused as a jti only in a new token, never the old one (expired).
    assert_eq!(reason(v.check_at(Some(&mint(t0, "a")), later)), "expired");
}

#[test]
fn iss_is_required_and_picks_the_keys() {
    let a = InteropSender::with_issuer(AUD, "issuer-a").unwrap();
    let b = InteropSender::with_issuer(AUD, "issuer-b").unwrap();
    let stranger = InteropSender::with_issuer(AUD, "issuer-c").unwrap();
    let v = TokenVerifier::new(
        vec![
            Issuer {
                name: "issuer-a".into(),
                keys: parse_keys(&a.public_key_pem()).unwrap(),
                policy: IssuerPolicy::default(),
            },
            Issuer {
                name: "issuer-b".into(),
                keys: parse_keys(&b.jwks()).unwrap(),
                policy: IssuerPolicy {
                    scopes: vec![Scope::Status],
                    ..Default::default()
                },
            },
        ],
        AUD,
        5,
    )
    .unwrap();
    let ga = v.check(Some(&bearer(&a.token(TokenKind::Valid)))).unwrap();
    assert_eq!(&*ga.issuer, "issuer-a");
    let gb = v.check(Some(&bearer(&b.token(TokenKind::Valid)))).unwrap();
    assert_eq!(&*gb.issuer, "issuer-b");
    assert!(!gb.allows(Scope::Provision) && gb.allows(Scope::Status));
    // b's key, claiming to be a: refused (a's keys do not verify it).
    let t = now();
    let forged =
        b.sign_claims(&json!({"iss": "issuer-a", "aud": AUD, "iat": t, "exp": t + 60, "jti": "x"}));
    assert_eq!(
        reason(v.check(Some(&bearer(&forged)))),
        "signature or aud check failed with the issuer's keys"
    );
    assert_eq!(
        reason(v.check(Some(&bearer(&stranger.token(TokenKind::Valid))))),
        "iss is not a configured issuer"
    );
    assert_eq!(
        reason(v.check(Some(&bearer(&a.token(TokenKind::NoIssuer))))),
        "no iss claim"
    );
}

#[test]
fn lifetime_leeway_and_nbf() {
    let s = InteropSender::new(AUD).unwrap();
    let v = verifier(&s, IssuerPolicy::default(), 30);
    let t = now();
    let mut n = 0;
    let mut mint = |claims: serde_json::Value| {
        n += 1;
        let mut c = json!({"iss": "cirrent", "aud": AUD, "jti": format!("j{n}")});
        for (k, val) in claims.as_object().unwrap() {
            c[k] = val.clone();
        }
        bearer(&s.sign_claims(&c))
    };
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t, "exp": t + 600}))))),
        "accepted"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t, "exp": t + 601}))))),
        "lifetime exp - iat above the issuer's maximum"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t - 100, "exp": t - 10}))))),
        "accepted",
        "expired within the leeway"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t - 200, "exp": t - 120}))))),
        "expired"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"exp": t + 60}))))),
        "iat missing or not a number"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t}))))),
        "exp missing or not a number"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t + 120, "exp": t + 180}))))),
        "iat in the future"
    );
    assert_eq!(
        reason(v.check(Some(&mint(
            json!({"iat": t, "nbf": t + 120, "exp": t + 180})
        )))),
        "not yet valid (nbf)"
    );
    assert_eq!(
        reason(v.check(Some(&mint(
            json!({"iat": t, "exp": t + 60, "aud": ["x", AUD]})
        )))),
        "accepted",
        "aud array containing ours"
    );
    assert_eq!(
        reason(v.check(Some(&mint(json!({"iat": t, "exp": t + 60, "jti": 5}))))),
        "jti not a string of 1..=256 characters"
    );
    let strict = verifier(&s, IssuerPolicy::default(), 0);
    assert_eq!(
        reason(strict.check(Some(&mint(json!({"iat": t - 100, "exp": t - 10}))))),
        "expired"
    );
    let long = verifier(
        &s,
        IssuerPolicy {
            max_lifetime_secs: 3600,
            ..Default::default()
        },
        0,
    );
    assert_eq!(
        reason(long.check(Some(&mint(json!({"iat": t, "exp": t + 3600}))))),
        "accepted"
    );
    assert_eq!(
        reason(long.check(Some(&bearer(&s.token(TokenKind::YearLong))))),
        "lifetime exp - iat above the issuer's maximum"
    );
}

#[test]
fn without_require_jti_tokens_lacking_one_pass_and_others_are_still_checked() {
    let s = InteropSender::new(AUD).unwrap();
    let v = verifier(
        &s,
        IssuerPolicy {
            require_jti: false,
            ..Default::default()
        },
        5,
    );
    let t = s.token(TokenKind::NoJti);
    assert!(v.check(Some(&bearer(&t))).is_ok());
    assert!(
        v.check(Some(&bearer(&t))).is_ok(),
        "no jti: no replay check"
    );
    let with = s.token(TokenKind::Valid);
    assert!(v.check(Some(&bearer(&with))).is_ok());
    assert!(v.check(Some(&bearer(&with))).is_err());
}

#[test]
fn bad_configurations_are_refused() {
    let s = InteropSender::new(AUD).unwrap();
    assert!(parse_keys("hello").is_err());
    assert!(parse_keys(r#"{"keys":[]}"#).is_err());
    assert!(TokenVerifier::new(Vec::new(), AUD, 0).is_err());
    let keys = || parse_keys(&s.public_key_pem()).unwrap();
    assert!(TokenVerifier::single("x", keys(), IssuerPolicy::default(), AUD, 121).is_err());
    assert!(TokenVerifier::single("x", keys(), IssuerPolicy::default(), " ", 0).is_err());
    assert!(TokenVerifier::single("", keys(), IssuerPolicy::default(), AUD, 0).is_err());
    assert!(TokenVerifier::single("x", Vec::new(), IssuerPolicy::default(), AUD, 0).is_err());
}
