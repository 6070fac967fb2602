#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (identity, verdict) = common::verifier().verify_der(data);
    let _ = (identity.map(|i| i.to_pem()), verdict.to_string());
});
