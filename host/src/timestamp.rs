//! ISO-8601 timestamps as the SDKs send them, and as weir writes them (UTC, milliseconds, `Z`).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Parses an ISO-8601 date-time. With no offset (`2024-01-02T03:04:05.678`, as some Python SDKs
/// send naive datetimes), UTC is assumed.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // RFC 3339 requires the `T`; ISO-8601 allows a space, and some clients use it.
    let s = s.replacen(' ', "T", 1);
    if let Ok(t) = OffsetDateTime::parse(&s, &Rfc3339) {
        return Some(t);
    }
    let naive = format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(&s, naive)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// `2024-01-02T03:04:05.678Z`.
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let (h, m, s, ms) = (t.hour(), t.minute(), t.second(), t.millisecond());
    format!(
        "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day()
    )
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn now_ms() -> i64 {
    unix_ms(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_sdks_send() {
        for s in [
            "2024-01-02T03:04:05.678Z",
            "2024-01-02T03:04:05.678+00:00",
            "2024-01-02T05:04:05.678+02:00",
            "2024-01-02T03:04:05.678000",
            "2024-01-02 03:04:05.678Z",
        ] {
            let t = parse(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(format(t), "2024-01-02T03:04:05.678Z", "{s}");
        }
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse("2024-13-02T03:04:05Z"), None);
    }
}
