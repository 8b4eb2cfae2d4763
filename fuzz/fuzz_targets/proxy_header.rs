//! The PROXY protocol parser, fed the input a byte at a time as a slow client sends it: no
//! panic, and the verdicts agree. Once `Invalid`, always `Invalid`; the first `Done` comes
//! exactly when its header's last byte arrives (so `len` never exceeds what was read, and every
//! proper prefix of a header is `Incomplete`) and stays the same whatever follows; `Incomplete`
//! never at or past the longest header of the version begun.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::{MAX_HEADER_LEN, Parsed, V1_MAX_LEN, parse_proxy_header as parse};

fuzz_target!(|data: &[u8]| {
    let limit = if data.first() == Some(&b'P') {
        V1_MAX_LEN
    } else {
        MAX_HEADER_LEN
    };
    let mut verdict = Parsed::Incomplete;
    for n in 0..=data.len() {
        let now = parse(&data[..n]);
        match (&verdict, &now) {
            (Parsed::Incomplete, Parsed::Incomplete) => {
                assert!(n < limit, "still incomplete at {n} bytes");
            }
            (Parsed::Incomplete, Parsed::Done { len, .. }) => {
                assert_eq!(*len, n, "a header that was complete before its last byte");
            }
            (Parsed::Incomplete | Parsed::Invalid(_), Parsed::Invalid(_)) => {}
            (Parsed::Done { .. }, _) => assert_eq!(verdict, now, "Done changed at {n} bytes"),
            (Parsed::Invalid(_), _) => panic!("{verdict:?}, then {now:?} at {n} bytes"),
        }
        verdict = now;
        if !matches!(verdict, Parsed::Incomplete) {
            break;
        }
    }
    // The rest of the input, however long, changes nothing (one read instead of many).
    let whole = parse(data);
    match (&verdict, &whole) {
        (Parsed::Invalid(_), Parsed::Invalid(_)) | (Parsed::Incomplete, Parsed::Incomplete) => {}
        _ => assert_eq!(verdict, whole, "one read and byte-by-byte reads disagree"),
    }
});
