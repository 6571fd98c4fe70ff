//! Dates as events and HTTP APIs spell them, as milliseconds since the Unix epoch.
//!
//! A plugin has no clock beyond [`now_ms`](crate::now_ms) and no time zone database, and a date
//! library would weigh more than the two formats a destination meets, so both are read here:
//!
//! - [`rfc3339_ms`]: event timestamps (`2024-05-01T12:00:00.000Z`), as the gateway writes them;
//! - [`http_date_ms`]: HTTP dates, as in `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
//!
//! Both return `None` for anything they do not recognise, never a guess.

/// Milliseconds since the Unix epoch of an ISO-8601 / RFC 3339 date-time:
/// `2024-05-01T12:00:00.000Z`, `2024-05-01T14:00:00+02:00`, `2024-05-01 12:00:00.5`.
///
/// Accepted: any number of fraction digits (cut to milliseconds), a `T`, `t` or space between
/// date and time, an offset `Z`, `±hh:mm` or `±hhmm`; without an offset the time is taken as UTC
/// (as the gateway reads the naive times some SDKs send). A date alone is refused: it is not an
/// instant.
pub fn rfc3339_ms(text: &str) -> Option<i64> {
    let mut c = Cursor::new(text.trim());
    let year = c.digits(4)?;
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return None;
    }
    let seconds = c.time_of_day()?;
    let mut millis = 0;
    if c.eat(b'.') || c.eat(b',') {
        let start = c.pos;
        let mut scale = 100;
        while let Some(digit) = c.digit() {
            millis += digit * scale;
            scale /= 10;
        }
        if c.pos == start {
            return None;
        }
    }
    let offset_minutes = match c.next() {
        None => 0,
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = c.digits(2)?;
            c.eat(b':');
            let minutes = c.digits(2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = i64::from(hours * 60 + minutes);
            if sign == b'-' { -total } else { total }
        }
        Some(_) => return None,
    };
    if !c.at_end() {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day)?;
    Some((days * 86_400 + i64::from(seconds) - offset_minutes * 60) * 1000 + i64::from(millis))
}

/// Milliseconds since the Unix epoch of an HTTP date (RFC 9110 §5.6.7) in any of its three
/// forms, which a recipient must all accept:
///
/// - `Sun, 06 Nov 1994 08:49:37 GMT` (the one servers send);
/// - `Sunday, 06-Nov-94 08:49:37 GMT` (obsolete RFC 850; years `70`–`99` are 19xx, others
///   20xx);
/// - `Sun Nov  6 08:49:37 1994` (obsolete asctime).
///
/// Month names and `GMT` are matched without regard to case, and `UTC` is taken for `GMT`; the
/// day name is not checked.
pub fn http_date_ms(text: &str) -> Option<i64> {
    let tokens: Vec<&str> = text
        .split([' ', ','])
        .filter(|token| !token.is_empty())
        .collect();
    let is_gmt = |zone: &str| zone.eq_ignore_ascii_case("GMT") || zone.eq_ignore_ascii_case("UTC");
    let (day, month, year, time) = match tokens.as_slice() {
        [_, day, month, year, time, zone] if is_gmt(zone) => {
            (*day, *month, number(year, 4, 4)?, *time)
        }
        [_, date, time, zone] if is_gmt(zone) => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let year = match year.len() {
                2 => match number(year, 2, 2)? {
                    yy @ 70.. => 1900 + yy,
                    yy => 2000 + yy,
                },
                _ => number(year, 4, 4)?,
            };
            (day, month, year, *time)
        }
        [_, month, day, time, year] => (*day, *month, number(year, 4, 4)?, *time),
        _ => return None,
    };
    let day = number(day, 1, 2)?;
    let month = month_number(month)?;
    let mut c = Cursor::new(time);
    let seconds = c.time_of_day()?;
    if !c.at_end() {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day)?;
    Some((days * 86_400 + i64::from(seconds)) * 1000)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn month_number(name: &str) -> Option<u32> {
    (1u32..)
        .zip(MONTHS)
        .find(|(_, month)| month.eq_ignore_ascii_case(name))
        .map(|(number, _)| number)
}

/// A number of `min..=max` ASCII digits, the whole of `text`.
fn number(text: &str, min: usize, max: usize) -> Option<u32> {
    if !(min..=max).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar; `None` when the
/// date does not exist. (Howard Hinnant's `days_from_civil`.)
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days {
        return None;
    }
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Reads ASCII from left to right.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.bytes.get(self.pos) == Some(&byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn digit(&mut self) -> Option<u32> {
        let digit = char::from(*self.bytes.get(self.pos)?).to_digit(10)?;
        self.pos += 1;
        Some(digit)
    }

    /// Exactly `count` digits.
    fn digits(&mut self, count: usize) -> Option<u32> {
        (0..count).try_fold(0, |value, _| Some(value * 10 + self.digit()?))
    }

    /// `hh:mm:ss` as seconds since midnight; a leap second (`:60`) counts as the next second.
    fn time_of_day(&mut self) -> Option<u32> {
        let hours = self.digits(2)?;
        self.expect(b':')?;
        let minutes = self.digits(2)?;
        self.expect(b':')?;
        let seconds = self.digits(2)?;
        (hours <= 23 && minutes <= 59 && seconds <= 60)
            .then_some(hours * 3600 + minutes * 60 + seconds)
    }

    fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_event_timestamps() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2024-05-01T12:00:00.000Z"),
            Some(1_714_564_800_000)
        );
        assert_eq!(
            rfc3339_ms("2024-05-01T12:00:00.123456Z"),
            Some(1_714_564_800_123)
        );
        assert_eq!(
            rfc3339_ms("2024-05-01T12:00:00.5z"),
            Some(1_714_564_800_500)
        );
        assert_eq!(
            rfc3339_ms("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000)
        );
        assert_eq!(
            rfc3339_ms("2024-05-01T10:30:00-0130"),
            Some(1_714_564_800_000)
        );
        assert_eq!(rfc3339_ms("2024-05-01 12:00:00"), Some(1_714_564_800_000));
        assert_eq!(
            rfc3339_ms(" 2024-02-29T00:00:00Z "),
            Some(1_709_164_800_000)
        );
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59.999Z"), Some(-1));
    }

    #[test]
    fn refuses_what_is_not_an_instant() {
        for text in [
            "",
            "2024-05-01",
            "2024-05-01T12:00Z",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00Z trailing",
            "1714564800000",
            "２０２４-05-01T12:00:00Z",
        ] {
            assert_eq!(rfc3339_ms(text), None, "{text:?}");
        }
    }

    #[test]
    fn reads_the_three_http_date_forms() {
        let expected = Some(784_111_777_000);
        assert_eq!(http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(http_date_ms("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(http_date_ms("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(
            http_date_ms("Wed, 01 May 2024 12:00:00 gmt"),
            Some(1_714_564_800_000)
        );
        assert_eq!(
            http_date_ms("Wednesday, 01-May-24 12:00:00 GMT"),
            Some(1_714_564_800_000)
        );
    }

    #[test]
    fn refuses_other_dates() {
        for text in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nox 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "2024-05-01T12:00:00Z",
        ] {
            assert_eq!(http_date_ms(text), None, "{text:?}");
        }
    }
}
