#![no_main]
//! The config loader (src/app/config.rs, compiled here by path: see
//! docs/adr/1001-fuzzing-root-crate-parsers-by-path.md): parse, every target table with
//! `${VAR}` interpolation, the `[trust]` options and the redacted `config show` rendering.
//! Errors are expected; a panic is a bug.

#[allow(dead_code)]
#[path = "../../src/app/config.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = config::Config::parse(text, Some("/fuzz/idbridge.toml".into())) else {
        return;
    };
    let _ = cfg.trust.options();
    for name in cfg.target_names() {
        let _ = cfg.target(&name);
    }
    let _ = cfg.show();
});
