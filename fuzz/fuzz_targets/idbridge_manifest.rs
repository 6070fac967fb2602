#![no_main]

#[path = "common.rs"]
mod common;

use idbridge_core::intake::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(Format::IdbridgeManifest, data));
