//! W3C Trace Context and Baggage as they arrive from outside, parsed to the
//! letter of the specifications (and their official test suite,
//! w3c/trace-context `test/test.py`), before anything trusts them:
//!
//! - [`traceparent`]: exactly one header, well formed after optional white
//!   space, ids not all zero; a later version is read by its first four
//!   fields. Anything else: no parent, a new trace.
//! - [`tracestate`]: every header combined into one list, in order; members
//!   checked (key and value grammar and lengths), empty members skipped, a
//!   duplicated key kept once (its first value), at most 32 members. A
//!   malformed member or more than 32 make the whole tracestate invalid: it
//!   is dropped, the traceparent still stands. Keys follow the grammar that
//!   OpenTelemetry's `TraceState` enforces (one `@`, a system of at most 13
//!   characters), stricter than the suite's Level 2 grammar: see `valid_key`.
//! - [`baggage`]: an edge drops a client's baggage unless its keys are
//!   allowed ([`BaggagePolicy`]), and bounds what it keeps: a public
//!   gateway must not let a client set values that services may trust.

/// Most members a tracestate may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest tracestate key.
pub const MAX_TRACESTATE_KEY: usize = 256;
/// Longest tracestate value.
pub const MAX_TRACESTATE_VALUE: usize = 256;

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn trim_ows(value: &str) -> &str {
    value.trim_matches(|c| c == ' ' || c == '\t')
}

/// The one valid `traceparent` among `values` (each header's value), as
/// version 00 with the four fields that version 00 has; `None` when there
/// is none, more than one, or it is malformed.
pub fn traceparent(values: &[&str]) -> Option<String> {
    let [value] = values else { return None };
    let value = trim_ows(value);
    let fields: Vec<&str> = value.split('-').collect();
    if fields.len() < 4 {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (fields[0], fields[1], fields[2], fields[3]);
    let well_formed = is_lower_hex(version, 2)
        && version != "ff"
        && (version != "00" || fields.len() == 4)
        && is_lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_lower_hex(flags, 2);
    well_formed.then(|| format!("00-{trace_id}-{parent_id}-{flags}"))
}

/// A key as OpenTelemetry's `TraceState` (0.33) takes it, which is what can
/// be propagated: `tenant@system` with one `@` and a system of at most 13
/// characters (the Level 1 grammar allows 14: OpenTelemetry's check is one
/// short). The suite's Level 2 grammar also takes `foo@@bar` and longer
/// systems; such a tracestate is dropped whole here, never passed on in part.
fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let first_ok = bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let chars_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@'));
    let vendor_ok = match key.match_indices('@').map(|(i, _)| i).collect::<Vec<_>>().as_slice() {
        [] => true,
        [at] => {
            let system = &key[at + 1..];
            system.len() <= 13 && system.bytes().next().is_none_or(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        _ => false,
    };
    first_ok && chars_ok && vendor_ok && key.len() <= MAX_TRACESTATE_KEY
}

fn valid_value(value: &str) -> bool {
    let allowed = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    !value.is_empty()
        && value.len() <= MAX_TRACESTATE_VALUE
        && value.bytes().all(allowed)
        && value.bytes().last().is_some_and(|b| b != b' ')
}

/// The combined `tracestate` of `values` (each header's value, in order),
/// or `None` when there is none or it is invalid.
pub fn tracestate(values: &[&str]) -> Option<String> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for value in values {
        for member in value.split(',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            let (key, value) = member.split_once('=')?;
            if !valid_key(key) || !valid_value(value) {
                return None;
            }
            if !members.iter().any(|(seen, _)| *seen == key) {
                members.push((key, value));
            }
        }
    }
    if members.is_empty() || members.len() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    Some(members.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(","))
}

/// What an edge lets through of a client's `baggage`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaggagePolicy {
    /// Keys a client may set; none by default, so all client baggage is
    /// dropped.
    pub allowed_keys: Vec<String>,
    /// Most bytes kept; members past it are dropped.
    pub max_bytes: usize,
}

/// The members of `values` (each `baggage` header) that `policy` allows,
/// within its size bound; `None` when none is left.
pub fn baggage(values: &[&str], policy: &BaggagePolicy) -> Option<String> {
    if policy.allowed_keys.is_empty() {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut size = 0;
    for member in values.iter().flat_map(|value| value.split(',')).map(trim_ows) {
        let key = member.split(['=', ';']).next().map(trim_ows).unwrap_or_default();
        if key.is_empty() || !member.contains('=') || !policy.allowed_keys.iter().any(|allowed| allowed == key) {
            continue;
        }
        let added = member.len() + usize::from(!kept.is_empty());
        if size + added > policy.max_bytes {
            break;
        }
        size += added;
        kept.push(member);
    }
    (!kept.is_empty()).then(|| kept.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

    #[test]
    fn one_well_formed_traceparent_is_taken() {
        assert_eq!(traceparent(&[TP]).as_deref(), Some(TP));
        for ows in [" ", "\t", "\t "] {
            assert_eq!(traceparent(&[&format!("{ows}{TP}{ows}")]).as_deref(), Some(TP));
        }
        let future = "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like";
        assert_eq!(traceparent(&[future]).as_deref(), Some(TP));
    }

    #[test]
    fn duplicated_or_malformed_traceparents_are_not() {
        assert_eq!(traceparent(&[TP, TP]), None);
        assert_eq!(traceparent(&[]), None);
        for bad in [
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
            "ff-12345678901234567890123456789012-1234567890123456-01",
            ".0-12345678901234567890123456789012-1234567890123456-01",
            "000-12345678901234567890123456789012-1234567890123456-01",
            "0-12345678901234567890123456789012-1234567890123456-01",
            "00-00000000000000000000000000000000-1234567890123456-01",
            "00-.2345678901234567890123456789012-1234567890123456-01",
            "00-123456789012345678901234567890123-1234567890123456-01",
            "00-1234567890123456789012345678901-1234567890123456-01",
            "00-12345678901234567890123456789012-0000000000000000-01",
            "00-12345678901234567890123456789012-123456789012345.-01",
            "00-12345678901234567890123456789012-12345678901234567-01",
            "00-12345678901234567890123456789012-1234567890123456-.0",
            "00-12345678901234567890123456789012-1234567890123456-001",
            "00-12345678901234567890123456789012-1234567890123456-1",
            "00-ABCDEF78901234567890123456789012-1234567890123456-01",
        ] {
            assert_eq!(traceparent(&[bad]), None, "{bad:?}");
        }
    }

    #[test]
    fn tracestate_headers_combine_in_order() {
        let combined = tracestate(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).unwrap();
        assert_eq!(combined, "foo=1,bar=2,rojo=1,congo=2,baz=3");
        assert_eq!(tracestate(&["", "foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(tracestate(&["foo=1 \t , \t bar=2, \t baz=3"]).as_deref(), Some("foo=1,bar=2,baz=3"));
        assert_eq!(tracestate(&[""]), None);
    }

    #[test]
    fn tracestate_keeps_a_duplicated_key_once() {
        assert_eq!(tracestate(&["foo=1,foo=2"]).as_deref(), Some("foo=1"));
        assert_eq!(tracestate(&["foo=1", "foo=1"]).as_deref(), Some("foo=1"));
    }

    #[test]
    fn tracestate_members_follow_the_grammar() {
        let key: String = ('a'..='z').chain('0'..='9').chain(['_', '-', '*', '/']).collect();
        let value: String = (0x20u8..=0x7e).filter(|b| *b != b',' && *b != b'=').map(char::from).collect();
        assert!(tracestate(&[&format!("{key}={value}")]).is_some());
        assert!(tracestate(&[&format!("{key}@a-z0-9_-*/={value}")]).is_some());
        assert!(tracestate(&["foo@=1,bar=2"]).is_some());
        for invalid in
            ["foo =1", "FOO=1", "foo.bar=1", "@foo=1,bar=2", "foo=bar=baz", "foo=,bar=3", "foo@@bar=1", "foo@bar@baz=1"]
        {
            assert_eq!(tracestate(&[invalid]), None, "{invalid:?}");
        }
        assert!(tracestate(&["foo=1", &format!("{}=1", "z".repeat(256))]).is_some());
        assert_eq!(tracestate(&["foo=1", &format!("{}=1", "z".repeat(257))]), None);
    }

    #[test]
    fn more_than_32_members_invalidate_the_tracestate() {
        let members = |n: usize| (1..=n).map(|i| format!("bar{i:02}={i:02}")).collect::<Vec<_>>().join(",");
        assert_eq!(tracestate(&[&members(32)]).map(|s| s.split(',').count()), Some(32));
        assert_eq!(tracestate(&[&members(33)]), None);
    }

    #[test]
    fn baggage_is_dropped_unless_allowed_and_bounded() {
        let none = BaggagePolicy { allowed_keys: vec![], max_bytes: 1024 };
        assert_eq!(baggage(&["userId=alice,isAdmin=true"], &none), None);
        let some = BaggagePolicy { allowed_keys: vec!["tenant".into()], max_bytes: 20 };
        assert_eq!(baggage(&["isAdmin=true, tenant=acme;prop=1"], &some).as_deref(), Some("tenant=acme;prop=1"));
        assert_eq!(baggage(&[&format!("tenant={}", "x".repeat(40))], &some), None, "over the bound");
    }
}
