//! The inetd.conf reader, both ways it is used: translated for `--format inetd` and loaded as
//! `-t` would (short of the system's lookups), and translated for `convert`. No panic; the YAML
//! it writes always reads as YAML; and every error the loader finds is told in the
//! inetd.conf's terms (`inetd.conf:LINE…`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::{check_inetd_text, check_table_text, inetd_to_yaml, yaml_syntax_error};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for convert in [false, true] {
        if let Ok(yaml) = inetd_to_yaml(&text, convert) {
            if let Some(error) = yaml_syntax_error(&yaml) {
                panic!("generated YAML does not read: {error}\n{yaml}");
            }
            if convert {
                let _ = check_table_text(&yaml);
            }
        }
    }
    if let Err(errors) = check_inetd_text(&text) {
        assert!(!errors.is_empty());
        for error in errors {
            assert!(error.starts_with("inetd.conf"), "unlocated: {error}");
        }
    }
});
