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
            .resolve(ca, &[], 0, 0)
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

mod chain_rules {
    //! Intermediates: keyCertSign, pathLen, validity at verification time; ECDSA malleability.
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;
    use crate::identity::{DeviceIdentity, Source};

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(
        name: &str,
        path_len: Option<u8>,
        usages: Vec<KeyUsagePurpose>,
    ) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = usages;
        p
    }

    fn root(name: &str, path_len: Option<u8>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let p = ca_params(name, path_len, vec![KeyUsagePurpose::KeyCertSign]);
        let der = p.self_signed(&key).unwrap().der().to_vec();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    fn sub(parent: &Ca, p: CertificateParams) -> Ca {
        let key = KeyPair::generate().unwrap();
        let der = p.signed_by(&key, &parent.issuer).unwrap().der().to_vec();
        Ca {
            der,
            issuer: Issuer::new(p, key),
        }
    }

    fn device(parent: &Ca, serial: u64) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("device {serial}"));
        p.serial_number = Some(serial.into());
        p.signed_by(&key, &parent.issuer).unwrap().der().to_vec()
    }

    fn verdict(anchors: &[&Ca], intermediates: &[&Ca], device: &[u8]) -> Verdict {
        let mut store = TrustStore::empty();
        for a in anchors {
            store.add_anchor_der(&a.der).unwrap();
        }
        for i in intermediates {
            store.add_intermediate_der(&i.der).unwrap();
        }
        let v = Verifier::new(store, &TrustOptions::default()).unwrap();
        let id = DeviceIdentity::from_der(
            device.to_vec(),
            Source {
                file: "test".into(),
                line: None,
                entry: None,
            },
        )
        .unwrap();
        v.verify_identity(&id, &[])
    }

    #[test]
    fn a_ca_without_key_cert_sign_signs_nothing() {
        let r = root("root A", None);
        let good = sub(
            &r,
            ca_params("int good", None, vec![KeyUsagePurpose::KeyCertSign]),
        );
        let bad = sub(
            &r,
            ca_params("int bad", None, vec![KeyUsagePurpose::DigitalSignature]),
        );
        assert!(verdict(&[&r], &[&good], &device(&good, 1)).is_valid());
        let v = verdict(&[&r], &[&bad], &device(&bad, 2));
        assert!(
            v.reason().unwrap_or_default().contains("keyCertSign"),
            "{v}"
        );
    }

    #[test]
    fn path_len_is_honoured() {
        let r0 = root("root pathlen 0", Some(0));
        let i0 = sub(
            &r0,
            ca_params(
                "int under pathlen 0",
                None,
                vec![KeyUsagePurpose::KeyCertSign],
            ),
        );
        let v = verdict(&[&r0], &[&i0], &device(&i0, 1));
        assert!(
            v.reason().unwrap_or_default().contains("pathLenConstraint"),
            "{v}"
        );
        // A device directly under the root is fine.
        assert!(verdict(&[&r0], &[], &device(&r0, 2)).is_valid());

        let r1 = root("root pathlen 1", Some(1));
        let a = sub(
            &r1,
            ca_params("int a", Some(0), vec![KeyUsagePurpose::KeyCertSign]),
        );
        assert!(verdict(&[&r1], &[&a], &device(&a, 3)).is_valid());
        // a has pathLen 0: nothing may be below it but devices.
        let b = sub(
            &a,
            ca_params("int b", None, vec![KeyUsagePurpose::KeyCertSign]),
        );
        let v = verdict(&[&r1], &[&a, &b], &device(&b, 4));
        assert!(
            v.reason().unwrap_or_default().contains("pathLenConstraint"),
            "{v}"
        );
        // Same chain, device verified first through `a` (cached), then through `b`.
        let mut store = TrustStore::empty();
        store.add_anchor_der(&r1.der).unwrap();
        store.add_intermediate_der(&a.der).unwrap();
        store.add_intermediate_der(&b.der).unwrap();
        let v = Verifier::new(store, &TrustOptions::default()).unwrap();
        let id = |der: Vec<u8>| {
            DeviceIdentity::from_der(
                der,
                Source {
                    file: "t".into(),
                    line: None,
                    entry: None,
                },
            )
            .unwrap()
        };
        assert!(v.verify_identity(&id(device(&a, 5)), &[]).is_valid());
        assert!(!v.verify_identity(&id(device(&b, 6)), &[]).is_valid());
    }

    #[test]
    fn an_expired_intermediate_invalidates_its_devices() {
        let r = root("root E", None);
        let mut p = ca_params("int expired", None, vec![KeyUsagePurpose::KeyCertSign]);
        p.not_before = rcgen::date_time_ymd(2015, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let expired = sub(&r, p);
        let v = verdict(&[&r], &[&expired], &device(&expired, 1));
        assert!(
            v.reason()
                .unwrap_or_default()
                .contains("intermediate \"int expired\" expired on 2020-01-01"),
            "{v}"
        );
        // Judged at a time inside its validity, the same chain is valid (the cached chain is
        // not tied to the time of the first verification).
        let mut store = TrustStore::empty();
        store.add_anchor_der(&r.der).unwrap();
        store.add_intermediate_der(&expired.der).unwrap();
        let at = |y| TrustOptions {
            validity: ValidityPolicy::At(OffsetDateTime::new_utc(
                ::time::Date::from_calendar_date(y, ::time::Month::June, 1).unwrap(),
                ::time::Time::MIDNIGHT,
            )),
            ..Default::default()
        };
        let dev = DeviceIdentity::from_der(
            device(&expired, 2),
            Source {
                file: "t".into(),
                line: None,
                entry: None,
            },
        )
        .unwrap();
        let past = Verifier::new(store.clone(), &at(2018)).unwrap();
        assert!(past.verify_identity(&dev, &[]).is_valid());
        let later = Verifier::new(store, &at(2021)).unwrap();
        assert!(!later.verify_identity(&dev, &[]).is_valid());
    }

    #[test]
    fn anchors_outside_their_validity_are_reported() {
        let key = KeyPair::generate().unwrap();
        let mut p = ca_params("old root", None, vec![KeyUsagePurpose::KeyCertSign]);
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2010, 1, 1);
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let mut store = TrustStore::empty();
        store.add_anchor_der(&der).unwrap();
        store.add_anchor_der(&root("fresh root", None).der).unwrap();
        let v = Verifier::new(store, &TrustOptions::default()).unwrap();
        let out = v.anchors_outside_validity();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, "old root");
    }
}

mod malleability {
    use super::*;
    use crate::identity::{DeviceIdentity, Source};

    /// P-256 group order.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    fn der_len(n: usize) -> Vec<u8> {
        match n {
            0..=127 => vec![n as u8],
            128..=255 => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    }

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(der_len(body.len()));
        v.extend_from_slice(body);
        v
    }

    fn int(mut b: &[u8]) -> Vec<u8> {
        while b.len() > 1 && b[0] == 0 {
            b = &b[1..];
        }
        let mut body = Vec::new();
        if b[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(b);
        tlv(0x02, &body)
    }

    /// The certificate with its ECDSA signature's `s` replaced by `n − s`.
    pub(super) fn malleate(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let tbs = cert.tbs_certificate.as_ref();
        let sig = &cert.signature_value.data;
        let (_, seq) = x509_parser::der_parser::parse_der(sig).unwrap();
        let parts = seq.as_sequence().unwrap();
        let r = parts[0].as_slice().unwrap();
        let s = parts[1].as_slice().unwrap();
        let mut s32 = [0u8; 32];
        let s_trim: Vec<u8> = s.iter().skip_while(|b| **b == 0).copied().collect();
        s32[32 - s_trim.len()..].copy_from_slice(&s_trim);
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = N[i] as i16 - s32[i] as i16 - borrow;
            borrow = i16::from(d < 0);
            out[i] = (d + if d < 0 { 256 } else { 0 }) as u8;
        }
        let new_sig = tlv(0x30, &[int(r), int(&out)].concat());
        let mut bits = vec![0u8];
        bits.extend(new_sig);
        // The AlgorithmIdentifier sits between the TBS and the signature BIT STRING.
        let tbs_end = der.windows(tbs.len()).position(|w| w == tbs).unwrap() + tbs.len();
        let (rest, _) = x509_parser::x509::AlgorithmIdentifier::from_der(&der[tbs_end..]).unwrap();
        let alg = &der[tbs_end..der.len() - rest.len()];
        tlv(0x30, &[tbs, alg, &tlv(0x03, &bits)].concat())
    }

    #[test]
    fn a_malleated_certificate_verifies_but_never_becomes_a_second_device() {
        let pki = idbridge_mock_clouds_free_pki();
        let (anchor, ca, device) = pki;
        let twin = malleate(&device);
        assert_ne!(sha256(&twin), sha256(&device), "another SHA-256");
        let mut store = TrustStore::empty();
        store.add_anchor_der(&anchor).unwrap();
        store.add_intermediate_der(&ca).unwrap();
        let v = Verifier::new(store, &TrustOptions::default()).unwrap();
        let id = |der: Vec<u8>| {
            DeviceIdentity::from_der(
                der,
                Source {
                    file: "t".into(),
                    line: None,
                    entry: None,
                },
            )
            .unwrap()
        };
        let (a, b) = (id(device.clone()), id(twin));
        assert!(v.verify_identity(&a, &[]).is_valid());
        assert!(
            v.verify_identity(&b, &[]).is_valid(),
            "the re-encoded signature still verifies"
        );
        assert_ne!(a.device_id, b.device_id);
        let mut keys = DuplicateKeys::new();
        assert_eq!(keys.check(&a), None);
        assert_eq!(
            keys.check(&a),
            None,
            "the same certificate twice is no duplicate key"
        );
        let why = keys.check(&b).expect("the twin is reported");
        // The index keeps 8 bytes of the first device's id (it holds one entry per device).
        assert!(why.contains(&a.device_id.as_str()[..16]), "{why}");
    }

    /// Root → CA → device, P-256, generated with rcgen.
    fn idbridge_mock_clouds_free_pki() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_params = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let rk = KeyPair::generate().unwrap();
        let rp = ca_params("malleability root");
        let root = rp.self_signed(&rk).unwrap().der().to_vec();
        let ri = Issuer::new(rp, rk);
        let ck = KeyPair::generate().unwrap();
        let cp = ca_params("malleability CA");
        let ca = cp.signed_by(&ck, &ri).unwrap().der().to_vec();
        let ci = Issuer::new(cp, ck);
        let dk = KeyPair::generate().unwrap();
        let mut dp = CertificateParams::new(Vec::<String>::new()).unwrap();
        dp.distinguished_name.push(DnType::CommonName, "device");
        let device = dp.signed_by(&dk, &ci).unwrap().der().to_vec();
        (root, ca, device)
    }
}

mod crl_reload {
    //! CRLs reload when their file changes; a corrupt rewrite keeps the old list; a CRL past
    //! its nextUpdate warns or refuses by policy.
    use std::path::Path;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    use super::*;
    use crate::identity::{DeviceIdentity, Source};

    struct Pki {
        root_der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn pki(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_der = p.self_signed(&key).unwrap().der().to_vec();
        Pki {
            root_der,
            issuer: Issuer::new(p, key),
        }
    }

    fn device(pki: &Pki, serial: u64) -> DeviceIdentity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("device {serial}"));
        p.serial_number = Some(serial.into());
        let der = p.signed_by(&key, &pki.issuer).unwrap().der().to_vec();
        DeviceIdentity::from_der(
            der,
            Source {
                file: "t".into(),
                line: None,
                entry: None,
            },
        )
        .unwrap()
    }

    /// A PEM CRL of `pki` revoking `serials`, next update in `next_year`.
    fn crl(pki: &Pki, serials: &[u64], next_year: i32) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(next_year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&pki.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn verifier(pki: &Pki, crl: &Path, opts: TrustOptions) -> Verifier {
        let mut store = TrustStore::empty();
        store.add_anchor_der(&pki.root_der).unwrap();
        Verifier::new(
            store,
            &TrustOptions {
                crls: vec![crl.to_path_buf()],
                ..opts
            },
        )
        .unwrap()
    }

    /// Rewrites `path` with a different length, so the change shows even on a file system
    /// with coarse modification times.
    fn rewrite(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn every_time() -> TrustOptions {
        TrustOptions {
            crl_check_every: Some(Duration::ZERO),
            ..Default::default()
        }
    }

    #[test]
    fn a_crl_rewritten_on_disk_revokes_on_the_next_verification() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki("reload root");
        let path = dir.path().join("root.crl");
        std::fs::write(&path, crl(&p, &[99], 2035)).unwrap();
        let v = verifier(&p, &path, every_time());
        let (d7, d8) = (device(&p, 7), device(&p, 8));
        assert!(v.verify_identity(&d7, &[]).is_valid());
        assert!(v.verify_identity(&d8, &[]).is_valid());
        rewrite(&path, &crl(&p, &[7, 99, 1000], 2035));
        let after = v.verify_identity(&d7, &[]);
        assert!(
            after
                .reason()
                .unwrap_or_default()
                .contains("revoked on 2025-06-01"),
            "{after}"
        );
        assert!(v.verify_identity(&d8, &[]).is_valid());
    }

    #[test]
    fn between_checks_only_an_explicit_reload_looks_at_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki("interval root");
        let path = dir.path().join("root.crl");
        std::fs::write(&path, crl(&p, &[], 2035)).unwrap();
        let v = verifier(
            &p,
            &path,
            TrustOptions {
                crl_check_every: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        );
        let d = device(&p, 5);
        assert!(v.verify_identity(&d, &[]).is_valid());
        rewrite(&path, &crl(&p, &[5, 6], 2035));
        assert!(
            v.verify_identity(&d, &[]).is_valid(),
            "the hour between looks has not passed"
        );
        assert!(v.reload_crls(), "the SIGHUP path sees the change");
        assert!(!v.verify_identity(&d, &[]).is_valid());
        assert!(!v.reload_crls(), "nothing changed since");
    }

    #[test]
    fn a_corrupt_rewrite_keeps_the_previous_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki("corrupt root");
        let other = pki("some other CA");
        let path = dir.path().join("root.crl");
        std::fs::write(&path, crl(&p, &[3], 2035)).unwrap();
        let v = verifier(&p, &path, every_time());
        let d = device(&p, 3);
        assert!(!v.verify_identity(&d, &[]).is_valid());
        for bad in [
            "-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n".to_owned(),
            // Well formed, but signed by a CA the store does not hold.
            crl(&other, &[], 2035),
            String::new(),
        ] {
            rewrite(&path, &bad);
            let still = v.verify_identity(&d, &[]);
            assert!(
                still.reason().unwrap_or_default().contains("revoked"),
                "{still}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!v.verify_identity(&d, &[]).is_valid(), "a deleted CRL too");
        // A good file again is read again.
        std::fs::write(&path, crl(&p, &[], 2035)).unwrap();
        assert!(v.verify_identity(&d, &[]).is_valid());
    }

    #[test]
    fn a_revoked_intermediate_is_seen_after_reload_despite_the_chain_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = pki("cache root");
        let key = KeyPair::generate().unwrap();
        let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.distinguished_name.push(DnType::CommonName, "cache int");
        ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ip.serial_number = Some(42u64.into());
        let int_der = ip.signed_by(&key, &root.issuer).unwrap().der().to_vec();
        let int = Pki {
            root_der: int_der.clone(),
            issuer: Issuer::new(ip, key),
        };
        let path = dir.path().join("root.crl");
        std::fs::write(&path, crl(&root, &[], 2035)).unwrap();
        let mut store = TrustStore::empty();
        store.add_anchor_der(&root.root_der).unwrap();
        store.add_intermediate_der(&int_der).unwrap();
        let v = Verifier::new(
            store,
            &TrustOptions {
                crls: vec![path.clone()],
                ..every_time()
            },
        )
        .unwrap();
        let d = device(&int, 1);
        assert!(v.verify_identity(&d, &[]).is_valid(), "cached as good");
        rewrite(&path, &crl(&root, &[42], 2035));
        let now = v.verify_identity(&d, &[]);
        assert!(
            now.reason()
                .unwrap_or_default()
                .contains("intermediate \"cache int\" revoked"),
            "{now}"
        );
    }

    #[test]
    fn a_stale_crl_warns_by_default_and_refuses_its_ca_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki("stale root");
        let unrelated = pki("fresh root");
        let path = dir.path().join("root.crl");
        std::fs::write(&path, crl(&p, &[], 2026)).unwrap();
        let at_2027 = ValidityPolicy::At(OffsetDateTime::new_utc(
            ::time::Date::from_calendar_date(2027, ::time::Month::March, 1).unwrap(),
            ::time::Time::MIDNIGHT,
        ));
        let build = |stale_crl| {
            let mut store = TrustStore::empty();
            store.add_anchor_der(&p.root_der).unwrap();
            store.add_anchor_der(&unrelated.root_der).unwrap();
            Verifier::new(
                store,
                &TrustOptions {
                    crls: vec![path.clone()],
                    validity: at_2027,
                    stale_crl,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let d = device(&p, 11);
        let warn = build(StaleCrlPolicy::Warn);
        assert!(warn.verify_identity(&d, &[]).is_valid());
        let notes = warn.stale_crl_notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("root.crl")
                && notes[0].contains("\"stale root\"")
                && notes[0].contains("past its nextUpdate 2026-01-01"),
            "{notes:?}"
        );

        let strict = build(StaleCrlPolicy::Error);
        let refused = strict.verify_identity(&d, &[]);
        let why = refused.reason().unwrap_or_default();
        assert!(
            why.contains("past its nextUpdate 2026-01-01") && why.contains("stale_crl"),
            "{refused}"
        );
        assert!(
            strict
                .verify_identity(&device(&unrelated, 11), &[])
                .is_valid(),
            "devices of another CA are not concerned"
        );
        // Before nextUpdate the same CRL is fine under either policy.
        let fresh = Verifier::new(
            {
                let mut s = TrustStore::empty();
                s.add_anchor_der(&p.root_der).unwrap();
                s
            },
            &TrustOptions {
                crls: vec![path.clone()],
                validity: ValidityPolicy::At(OffsetDateTime::new_utc(
                    ::time::Date::from_calendar_date(2025, ::time::Month::March, 1).unwrap(),
                    ::time::Time::MIDNIGHT,
                )),
                stale_crl: StaleCrlPolicy::Error,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fresh.verify_identity(&d, &[]).is_valid());
        assert!(fresh.stale_crl_notes().is_empty());
    }

    #[test]
    fn stale_crl_policy_parses() {
        assert_eq!(
            "warn".parse::<StaleCrlPolicy>().unwrap(),
            StaleCrlPolicy::Warn
        );
        assert_eq!(
            "error".parse::<StaleCrlPolicy>().unwrap(),
            StaleCrlPolicy::Error
        );
        assert!("fatal".parse::<StaleCrlPolicy>().is_err());
    }
}
