#![no_main]
//! The `/interop` request parser of `idbridge serve` (src/serve/request.rs, compiled here by
//! path: see docs/adr/1001-fuzzing-root-crate-parsers-by-path.md). Any panic is a bug; so is a
//! `ref` that keeps a control character or grows past its bound.

#[allow(dead_code)]
#[path = "../../src/serve/request.rs"]
mod request;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((action, req)) = request::parse_body(data) else {
        return;
    };
    let _ = action;
    if let Ok(entries) = request::parse_certs(&req, 1_000) {
        for e in entries {
            let reference = match &e {
                request::Entry::Ok(item) => &item.reference,
                request::Entry::Undecodable(r) => r,
            };
            assert!(!reference.is_empty(), "empty ref accepted");
            assert!(reference.chars().count() <= request::MAX_REF_CHARS);
            assert!(
                !reference.chars().any(char::is_control),
                "control character kept in {reference:?}"
            );
        }
    }
    if let Ok(request::StatusQuery::Fingerprints(fps)) = request::parse_status(&req, 10_000) {
        assert!(fps.len() <= 10_000);
        assert!(fps.iter().all(|f| f.len() == 64));
    }
});
