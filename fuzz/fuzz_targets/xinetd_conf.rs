//! The xinetd reader (`convert --from xinetd`; an `include` or `includedir` reads nothing): no
//! panic, the YAML it writes always reads as YAML, and the loader survives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::{check_table_text, xinetd_to_yaml, yaml_syntax_error};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(yaml) = xinetd_to_yaml(&text) {
        if let Some(error) = yaml_syntax_error(&yaml) {
            panic!("generated YAML does not read: {error}\n{yaml}");
        }
        let _ = check_table_text(&yaml);
    }
});
