//! The fast reader of the common table shape (src/config/simple.rs) against the general YAML
//! parser: wherever the fast one reads a text, the general one reads it without a mistake and
//! builds the same tree, positions included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::simple_yaml_agrees;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    assert!(simple_yaml_agrees(&text), "the two readings differ:\n{text}");
});
