//! Hybrid logical clocks (Kulkarni et al.): physical milliseconds plus a logical counter, so a
//! causally later event always has a larger timestamp even when wall clocks are skewed.
//!
//! Time comes in as `now_ms` (milliseconds since the Unix epoch); this module never reads a clock.
//! Timestamps order by `(millis, counter)`; a [`Stamp`] adds the writing client's id so that the
//! order is total across replicas (the LWW tie-break).
//!
//! Wire form: RFC 3339 UTC with milliseconds, plus `~counter` when the counter is not zero:
//! `2026-01-30T12:00:00.000Z~3`. Any RFC 3339 time is accepted on input (api.md's examples send
//! `2026-01-30T12:00:00Z`), with the counter 0.

use crate::error::Error;
use crate::ids::ClientId;
use std::fmt;

/// A hybrid logical clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HlcTimestamp {
    pub millis: u64,
    pub counter: u32,
}

/// Largest timestamp we encode: 9999-12-31T23:59:59.999Z.
pub const MAX_MILLIS: u64 = 253_402_300_799_999;

impl HlcTimestamp {
    pub const fn new(millis: u64, counter: u32) -> Self {
        Self { millis, counter }
    }

    /// The next tick after this one (used when the physical clock has not moved).
    fn successor(self) -> Self {
        match self.counter.checked_add(1) {
            Some(counter) => Self { millis: self.millis, counter },
            None => Self { millis: self.millis + 1, counter: 0 },
        }
    }

    /// Parse the wire form (see module docs).
    /// [`HlcTimestamp::parse`], but a valid time before 1970 is 1970 (search bounds: a time
    /// before everything bounds nothing).
    pub fn parse_clamped(s: &str) -> Result<Self, Error> {
        match parse_rfc3339_millis(s) {
            Err(BEFORE_1970) => Ok(Self { millis: 0, counter: 0 }),
            _ => Self::parse(s),
        }
    }

    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Decode(format!("timestamp {s:?}: {why}"));
        let (time, counter) = match s.split_once('~') {
            Some((t, c)) => {
                if c.is_empty() || c.len() > 10 || !c.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("counter must be decimal digits"));
                }
                (t, c.parse::<u32>().map_err(|_| bad("counter out of range"))?)
            }
            None => (s, 0),
        };
        let millis = parse_rfc3339_millis(time).map_err(bad)?;
        Ok(Self { millis, counter })
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_rfc3339_millis(f, self.millis)?;
        if self.counter != 0 {
            write!(f, "~{}", self.counter)?;
        }
        Ok(())
    }
}

impl serde::Serialize for HlcTimestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HlcTimestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        HlcTimestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A timestamp with the writer's id: a total order over all writes, used by last-write-wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub time: HlcTimestamp,
    pub client: ClientId,
}

/// One replica's hybrid logical clock.
#[derive(Debug, Clone)]
pub struct HybridClock {
    last: HlcTimestamp,
    max_drift_ms: Option<u64>,
}

impl HybridClock {
    /// A clock that accepts any remote reading (clients may be skewed by a day or more; HLC
    /// keeps causality regardless). Servers may set a drift limit with [`Self::with_max_drift`].
    pub fn new() -> Self {
        Self { last: HlcTimestamp::default(), max_drift_ms: None }
    }

    pub fn with_max_drift(max_drift_ms: u64) -> Self {
        Self { last: HlcTimestamp::default(), max_drift_ms: Some(max_drift_ms) }
    }

    /// Resume from the last timestamp this replica issued (after a restart).
    pub fn resume(mut self, last: HlcTimestamp) -> Self {
        self.last = self.last.max(last);
        self
    }

    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// A timestamp for a local event or a message about to be sent.
    pub fn now(&mut self, now_ms: u64) -> HlcTimestamp {
        let now_ms = now_ms.min(MAX_MILLIS);
        self.last = if now_ms > self.last.millis {
            HlcTimestamp::new(now_ms, 0)
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Merge a remote timestamp on receipt; the result is after both the remote reading and
    /// everything this replica issued before.
    pub fn observe(&mut self, remote: HlcTimestamp, now_ms: u64) -> Result<HlcTimestamp, Error> {
        if let Some(limit_ms) = self.max_drift_ms {
            let drift_ms = remote.millis.saturating_sub(now_ms);
            if drift_ms > limit_ms {
                return Err(Error::ClockDrift { drift_ms, limit_ms });
            }
        }
        let now_ms = now_ms.min(MAX_MILLIS);
        let top = self.last.max(remote);
        self.last =
            if now_ms > top.millis { HlcTimestamp::new(now_ms, 0) } else { top.successor() };
        Ok(self.last)
    }
}

impl Default for HybridClock {
    fn default() -> Self {
        Self::new()
    }
}

// --- RFC 3339 without a time library (civil-from-days after Howard Hinnant) -------------------

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn write_rfc3339_millis(f: &mut fmt::Formatter<'_>, millis: u64) -> fmt::Result {
    let secs = (millis / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    write!(
        f,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        millis % 1000
    )
}

/// Milliseconds since the epoch for `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)`.
const BEFORE_1970: &str = "before 1970";

pub(crate) fn parse_rfc3339_millis(s: &str) -> Result<u64, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return Err("not an RFC 3339 time");
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, &'static str> {
        let part = &s[range];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| "bad number")
        } else {
            Err("expected digits")
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err("not an RFC 3339 time");
    }
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err("field out of range");
    }
    let mut i = 19;
    let mut frac_ms = 0u64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return Err("bad fraction");
        }
        let padded: String = digits.chars().chain("000".chars()).take(3).collect();
        frac_ms = padded.parse().map_err(|_| "bad fraction")?;
    }
    let offset_s: i64 = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            if oh > 23 || om > 59 {
                return Err("bad offset");
            }
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err("bad time zone"),
    };
    let secs = days_from_civil(y, mo, d) * 86_400
        + (h as i64) * 3600
        + (mi as i64) * 60
        + sec.min(59) as i64
        - offset_s;
    if secs < 0 {
        return Err(BEFORE_1970);
    }
    let millis = secs as u64 * 1000 + frac_ms;
    if millis > MAX_MILLIS {
        return Err("after year 9999");
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_clamped_parse_takes_times_before_1970_as_1970_and_nothing_else_more() {
        assert_eq!(HlcTimestamp::parse_clamped("0001-01-01T00:00:00Z").unwrap().millis, 0);
        assert_eq!(HlcTimestamp::parse_clamped("1970-01-01T00:00:01Z").unwrap().millis, 1_000);
        assert!(HlcTimestamp::parse_clamped("2026-02-30T00:00:00Z").is_err());
        assert!(HlcTimestamp::parse("0001-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn local_events_strictly_increase_even_when_the_clock_stands_still_or_goes_back() {
        let mut c = HybridClock::new();
        let a = c.now(1_000);
        let b = c.now(1_000);
        let d = c.now(900);
        assert!(a < b && b < d);
        assert_eq!(d, HlcTimestamp::new(1_000, 2));
        assert_eq!(c.now(2_000), HlcTimestamp::new(2_000, 0));
    }

    #[test]
    fn receive_orders_after_the_remote_reading_despite_a_slow_local_clock() {
        let mut slow = HybridClock::new();
        let remote = HlcTimestamp::new(86_400_000 + 5_000, 7); // a day ahead
        let seen = slow.observe(remote, 5_000).unwrap();
        assert!(seen > remote);
        assert!(slow.now(5_001) > seen, "a later local event stays after what it saw");
    }

    #[test]
    fn drift_limit_refuses_far_future_readings() {
        let mut c = HybridClock::with_max_drift(60_000);
        let e = c.observe(HlcTimestamp::new(200_000, 0), 100_000).unwrap_err();
        assert_eq!(e, Error::ClockDrift { drift_ms: 100_000, limit_ms: 60_000 });
        assert_eq!(c.last(), HlcTimestamp::default(), "a refused reading changes nothing");
    }

    #[test]
    fn wire_form_matches_api_md_examples() {
        let t = HlcTimestamp::parse("2026-01-30T12:00:00Z").unwrap();
        assert_eq!(t.millis, 1_769_774_400_000);
        assert_eq!(t.to_string(), "2026-01-30T12:00:00.000Z");
        let t = HlcTimestamp::parse("2026-01-30T13:00:00.5+01:00~3").unwrap();
        assert_eq!(t, HlcTimestamp::new(1_769_774_400_500, 3));
        assert_eq!(t.to_string(), "2026-01-30T12:00:00.500Z~3");
    }

    #[test]
    fn bad_timestamps_are_errors() {
        for s in [
            "",
            "2026-01-30",
            "2026-02-30T00:00:00Z",
            "2026-01-30T24:00:00Z",
            "2026-01-30T12:00:00",
            "2026-01-30T12:00:00Z~",
            "2026-01-30T12:00:00Z~x",
            "2026-01-30T12:00:00Z~99999999999",
            "1969-12-31T23:59:59Z",
            "2026-01-30T12:00:00.Z",
            "２026-01-30T12:00:00Z",
        ] {
            assert!(HlcTimestamp::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn stamps_break_ties_by_client_id() {
        let t = HlcTimestamp::new(5, 0);
        let a = Stamp { time: t, client: ClientId::new("a").unwrap() };
        let b = Stamp { time: t, client: ClientId::new("b").unwrap() };
        assert!(a < b);
    }

    proptest! {
        #[test]
        fn wire_form_round_trips(millis in 0..=MAX_MILLIS, counter: u32) {
            let t = HlcTimestamp::new(millis, counter);
            prop_assert_eq!(HlcTimestamp::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = HlcTimestamp::parse(&s);
        }

        #[test]
        fn causality_holds_under_any_skew(
            events in proptest::collection::vec((0u8..3, 0u64..200_000_000, any::<bool>()), 1..60),
        ) {
            // Three replicas with arbitrary (skewed, non-monotonic) clocks exchanging messages:
            // every receive is after its send, every local event after the previous one.
            let mut clocks = [HybridClock::new(), HybridClock::new(), HybridClock::new()];
            let mut last_sent: Option<HlcTimestamp> = None;
            let mut previous = [HlcTimestamp::default(); 3];
            for (who, now, receive) in events {
                let i = who as usize;
                let t = match (receive, last_sent) {
                    (true, Some(sent)) => {
                        let t = clocks[i].observe(sent, now).unwrap();
                        prop_assert!(t > sent);
                        t
                    }
                    _ => clocks[i].now(now),
                };
                prop_assert!(t > previous[i]);
                previous[i] = t;
                last_sent = Some(t);
            }
        }
    }
}
