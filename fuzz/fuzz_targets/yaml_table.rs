//! The YAML loader and checker on one table (`include:` names nothing): no panic, every error
//! located in the table's file, and a table it accepts dumps (`rinetd -T`) to YAML that reads
//! back without a mistake and dumps to the very same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::dump_table_text;

fuzz_target!(|data: &[u8]| {
    // A table is read as UTF-8; the lossy reading keeps the rest of an input worth exploring.
    let text = String::from_utf8_lossy(data);
    match dump_table_text(&text) {
        Ok(first) => match dump_table_text(&first) {
            Ok(again) => assert_eq!(again, first, "a dump of the dump differs"),
            Err(errors) => panic!("the dump does not read back: {errors:?}\n{first}"),
        },
        Err(errors) => {
            assert!(!errors.is_empty());
            for error in errors {
                assert!(error.starts_with("table"), "unlocated: {error}");
            }
        }
    }
});
