use super::*;

#[test]
fn builtin_store_holds_every_pinned_certificate() {
    let store = TrustStore::builtin();
    assert_eq!(store.cas.len(), 17, "{:?}", store.describe());
    assert_eq!(store.signers.len(), 6);
    let names = store.describe();
    for want in [
        "Infineon OPTIGA(TM) ECC Root CA (anchor)",
        "Infineon OPTIGA(TM) ECC Root CA 2 (anchor)",
        "Infineon OPTIGA(TM) RSA Root CA 2 (anchor)",
        "Infineon OPTIGA(TM) Trust M CA 101 (intermediate)",
        "Infineon OPTIGA(TM) Trust M CA 300 (intermediate)",
        "Infineon OPTIGA(TM) Trust M CA 306 (intermediate)",
        "Infineon OPTIGA(TM) Trust M CA 309 (intermediate)",
        "Infineon OPTIGA(TM) Trust M Test CA 000 (test root)",
        "Crypto Authentication Root CA 002 (anchor)",
        "ATECC Root CA 001 (anchor)",
        "Crypto Authentication Signer 2A00 (intermediate)",
        "ATECC 1H Signer 218B (intermediate)",
        "Manifest Signer 005 (manifest signer)",
        "Log Signer 001 (manifest signer)",
        "Example Signer FFFF (test manifest signer)",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn manifest_signer_thumbprints_and_kids_match_microchip_headers() {
    let store = TrustStore::builtin();
    let find = |name: &str| store.signers.iter().find(|s| s.name == name).unwrap();
    let s5 = find("Manifest Signer 005");
    assert_eq!(s5.x5t_s256, "Vx2ZhBEX46-zTyiIYEWQP6eFzCg90ugGjh5epGBM4OM");
    assert_eq!(s5.kid.as_deref(), Some("TCnpnzYB8M3CO776ByPJ2yX3KYo"));
    let s2 = find("Log Signer 002");
    assert_eq!(s2.x5t_s256, "U9TKmw4f3iG56OGR8YV_Ncxlk0DlG0FyL9aDlwfbv1A");
    assert_eq!(s2.kid.as_deref(), Some("8VeKGdyU2d8wev6_VzNJOBOv-cA"));
    let test = find("Example Signer FFFF");
    assert!(test.test);
    assert_eq!(test.x5t_s256, "2g4o9i6qm9FzIH4_5WYWC4tJL_RfwMzjslvvFz0jUpA");
}

#[test]
fn every_builtin_intermediate_chains_to_a_builtin_root() {
    let v = Verifier::new(TrustStore::builtin(), &TrustOptions::default()).unwrap();
    for ca in v.store.cas.iter().filter(|c| !c.anchor) {
        let anchor = v
            .resolve(ca, &[], 0)
            .unwrap_or_else(|e| panic!("{}: {e}", ca.name));
        assert!(!anchor.test, "{}", ca.name);
    }
    // The P-521/SHA-512 root signs CA 306: cached after the first resolution.
    assert!(v.chains.read().unwrap().len() >= 10);
}

#[test]
fn validity_policy_parses() {
    assert_eq!(
        "now".parse::<ValidityPolicy>().unwrap(),
        ValidityPolicy::Now
    );
    assert_eq!(
        "ignore".parse::<ValidityPolicy>().unwrap(),
        ValidityPolicy::Ignore
    );
    assert!(matches!(
        "2030-01-01T00:00:00Z".parse::<ValidityPolicy>().unwrap(),
        ValidityPolicy::At(_)
    ));
    assert!("tomorrow".parse::<ValidityPolicy>().is_err());
}

#[test]
fn validity_is_judged_at_the_policy_time() {
    let der = ::pem::parse(include_str!(
        "../../../tests/fixtures/real/infineon/device/trust-m-v1-ca101-certificates-readme.pem"
    ))
    .unwrap()
    .into_contents();
    let at = |t: &str| {
        let opts = TrustOptions {
            validity: t.parse().unwrap(),
            ..TrustOptions::default()
        };
        Verifier::from_options(&opts).unwrap().verify_der(&der).1
    };
    assert!(at("now").is_valid());
    assert!(at("ignore").is_valid());
    let late = at("2040-01-01T00:00:00Z");
    assert!(
        late.reason().unwrap().starts_with("expired on 2039-06-18"),
        "{late}"
    );
    let early = at("2019-01-01T00:00:00Z");
    assert!(
        early
            .reason()
            .unwrap()
            .contains("not valid before 2019-06-18"),
        "{early}"
    );
}
