//! RFC 868 time: the seconds since 1900-01-01 00:00 UTC as a 32-bit big-endian number (it wraps
//! in 2036, as the RFC's 32 bits do).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 to 1970-01-01.
const FROM_1900_TO_1970: u64 = 2_208_988_800;

pub fn answer(now: SystemTime) -> Vec<u8> {
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let since_1900 = (unix + FROM_1900_TO_1970) as u32;
    since_1900.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epoch_and_a_known_date() {
        assert_eq!(answer(UNIX_EPOCH), 2_208_988_800u32.to_be_bytes());
        // 2026-11-23 01:16:28 UTC
        let now = UNIX_EPOCH + Duration::from_secs(1_795_396_588);
        assert_eq!(
            answer(now),
            ((1_795_396_588u64 + 2_208_988_800) as u32).to_be_bytes()
        );
    }
}
