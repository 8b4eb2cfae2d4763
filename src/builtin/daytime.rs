//! RFC 867 daytime: the current date and time as one line of ASCII. The RFC fixes no syntax;
//! this is the ctime(3) layout inetd has always sent, in UTC: `Mon Nov 23 01:16:28 2026\r\n`.

use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

pub fn answer(now: SystemTime) -> Vec<u8> {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let rest = secs % 86_400;
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}\r\n",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        year
    )
    .into_bytes()
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31): Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        let at = |secs| String::from_utf8(answer(UNIX_EPOCH + Duration::from_secs(secs))).unwrap();
        assert_eq!(at(0), "Thu Jan  1 00:00:00 1970\r\n");
        assert_eq!(at(951_782_400), "Tue Feb 29 00:00:00 2000\r\n");
        assert_eq!(at(1_795_396_588), "Mon Nov 23 01:16:28 2026\r\n");
    }
}
