//! No card number, CVV or e-mail address leaves a process in telemetry:
//! the one scrubber, applied where telemetry leaves, not by care at each
//! call site.
//!
//! - [`redact`]: a text with every e-mail address (also `%40`-encoded, as in
//!   baggage), card number (13 to 19 digits, spaces or dashes between
//!   groups allowed, passing the Luhn check) and CVV after a `cvv`/`cvc`
//!   label replaced by `[email]`, `[card]`, `[cvv]`.
//! - [`redact_value`]: the same for an attribute, whose key may say it is
//!   secret (`*cvv*`, `*email*`, `*card_number*`...): then the whole value
//!   goes.
//! - [`RedactingExporter`]: wraps a span exporter; every span's name,
//!   attributes, events, links and status description are scrubbed before
//!   they are exported (to the span feed, to OTLP).
//! - [`RedactingWriter`]: wraps the log output; every log line is scrubbed.
//!
//! The messaging crate applies [`redact`] to every header it writes and to
//! dead letters. Hand-written rather than a regex crate: three small
//! scanners over bytes, no backtracking, and the Luhn check a regex cannot
//! express.

use std::borrow::Cow;
use std::io;

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

const EMAIL: &str = "[email]";
const CARD: &str = "[card]";
const CVV: &str = "[cvv]";
const REDACTED: &str = "[redacted]";

/// `text` with e-mail addresses, card numbers and labelled CVVs replaced.
pub fn redact(text: &str) -> Cow<'_, str> {
    // One cheap pass first: nearly every text holds nothing to scrub.
    if !might_hold_secret(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let scrubbed = redact_cvvs(&redact_cards(&redact_emails(text)));
    if scrubbed == text { Cow::Borrowed(text) } else { Cow::Owned(scrubbed) }
}

/// An attribute's value, scrubbed; all of it when its key names a secret.
pub fn redact_value(key: &str, value: &str) -> Cow<'static, str> {
    if secret_key(key) {
        return Cow::Borrowed(REDACTED);
    }
    Cow::Owned(redact(value).into_owned())
}

/// Keys whose values are secret whatever they look like. `card_last4` is
/// not: four digits identify no card.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["cvv", "cvc", "email", "e_mail", "card_number", "card.number", "cardnumber", "pan"].iter().any(|secret| {
        key.split(['.', '_', '-']).any(|token| token == *secret) || key.ends_with(secret) && secret.len() > 3
    })
}

/// Whether `text` has an `@` (or `%40`), a `cvv`/`cvc` label, or 13
/// digits in a row (single spaces or dashes between them allowed): what
/// every secret needs.
fn might_hold_secret(text: &[u8]) -> bool {
    let mut digits = 0;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'@' => return true,
            b'%' if text[i..].starts_with(b"%40") => return true,
            b'c' | b'C'
                if matches!(text.get(i + 1), Some(b'v' | b'V'))
                    && matches!(text.get(i + 2), Some(b'v' | b'V' | b'c' | b'C')) =>
            {
                return true;
            }
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 13 {
                    return true;
                }
            }
            b' ' | b'-' if digits > 0 && matches!(text.get(i + 1), Some(b'0'..=b'9')) => {}
            _ => digits = 0,
        }
    }
    false
}

fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn is_domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Replaces `local@domain.tld` (and `local%40domain.tld`).
fn redact_emails(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let at_len = if bytes[i] == b'@' {
            1
        } else if bytes[i..].starts_with(b"%40") {
            3
        } else {
            i += 1;
            continue;
        };
        let mut start = i;
        while start > copied && is_local_char(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = i + at_len;
        while end < bytes.len() && is_domain_char(bytes[end]) {
            end += 1;
        }
        // Trailing dots or dashes end a sentence, not a domain.
        while end > i + at_len && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &text[i + at_len..end];
        let is_email = start < i && domain.contains('.') && !domain.starts_with('.');
        if is_email {
            out.push_str(&text[copied..start]);
            out.push_str(EMAIL);
            copied = end;
            i = end;
        } else {
            i += at_len;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces 13 to 19 digits, in groups separated by single spaces or
/// dashes, not part of a longer word, that pass the Luhn check. Within a
/// run of groups (`card 4242 4242 4242 4242 2 items`) every stretch of
/// whole groups is a candidate, the longest first.
fn redact_cards(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if !bytes[i].is_ascii_digit() || !starts_word {
            i += 1;
            continue;
        }
        // The run's groups of digits: (start, end) byte offsets.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let group_start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((group_start, j));
            let separated = j + 1 < bytes.len() && matches!(bytes[j], b' ' | b'-') && bytes[j + 1].is_ascii_digit();
            if !separated {
                break;
            }
            j += 1;
        }
        let run_end = j;
        // A last group glued to a letter is part of a word (an id), not of
        // a card.
        if run_end < bytes.len() && bytes[run_end].is_ascii_alphanumeric() {
            groups.pop();
        }
        let mut g = 0;
        while g < groups.len() {
            let card = (g..groups.len()).rev().find(|&last| {
                let digits: Vec<u8> =
                    groups[g..=last].iter().flat_map(|&(a, b)| bytes[a..b].iter().map(|d| d - b'0')).collect();
                (13..=19).contains(&digits.len()) && luhn(&digits)
            });
            match card {
                Some(last) => {
                    out.push_str(&text[copied..groups[g].0]);
                    out.push_str(CARD);
                    copied = groups[last].1;
                    g = last + 1;
                }
                None => g += 1,
            }
        }
        i = run_end;
    }
    out.push_str(&text[copied..]);
    out
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| {
            let digit = u32::from(digit);
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Replaces the 3 or 4 digits after a `cvv` or `cvc` label (`cvv=123`,
/// `"cvv":"123"`, `cvc: 1234`).
fn redact_cvvs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = ["cvv", "cvc"].iter().filter_map(|label| lower[search..].find(label)).min() {
        let label_end = search + found + 3;
        let mut j = label_end;
        // Up to 4 characters of punctuation between the label and the digits.
        while j < bytes.len() && j - label_end < 4 && matches!(bytes[j], b'"' | b'\'' | b':' | b'=' | b' ' | b'\\') {
            j += 1;
        }
        let digits_start = j;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        let count = j - digits_start;
        if (3..=4).contains(&count) && (j == bytes.len() || !bytes[j].is_ascii_alphanumeric()) {
            out.push_str(&text[copied..digits_start]);
            out.push_str(CVV);
            copied = j;
        }
        search = j.max(label_end);
    }
    out.push_str(&text[copied..]);
    out
}

fn redact_key_value(attribute: &mut KeyValue) {
    let key = attribute.key.as_str();
    let replaced = match &attribute.value {
        Value::String(value) => {
            let scrubbed = redact_value(key, value.as_str());
            (scrubbed != value.as_str()).then(|| scrubbed.into_owned())
        }
        // A number under a secret key (a CVV recorded as an integer).
        Value::I64(_) | Value::F64(_) if secret_key(key) => Some(REDACTED.to_string()),
        Value::Array(opentelemetry::Array::String(values)) => {
            let scrubbed: Vec<String> =
                values.iter().map(|value| redact_value(key, value.as_str()).into_owned()).collect();
            (scrubbed.iter().zip(values).any(|(new, old)| new != old.as_str())).then(|| scrubbed.join(","))
        }
        _ => None,
    };
    if let Some(replaced) = replaced {
        attribute.value = Value::from(replaced);
    }
}

fn redact_cow(text: &mut Cow<'static, str>) {
    if let Cow::Owned(scrubbed) = redact(text) {
        *text = Cow::Owned(scrubbed);
    }
}

/// Scrubs everything a span carries that may hold text.
pub fn redact_span(span: &mut SpanData) {
    redact_cow(&mut span.name);
    span.attributes.iter_mut().for_each(redact_key_value);
    for event in &mut span.events.events {
        redact_cow(&mut event.name);
        event.attributes.iter_mut().for_each(redact_key_value);
    }
    for link in &mut span.links.links {
        link.attributes.iter_mut().for_each(redact_key_value);
    }
    if let opentelemetry::trace::Status::Error { description } = &mut span.status {
        redact_cow(description);
    }
}

/// A span exporter that scrubs every span before `inner` sees it.
#[derive(Debug)]
pub struct RedactingExporter<E> {
    inner: E,
}

impl<E> RedactingExporter<E> {
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

impl<E: SpanExporter> SpanExporter for RedactingExporter<E> {
    fn export(&self, mut batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        batch.iter_mut().for_each(redact_span);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Log output that scrubs each line it is given. The log layer formats a
/// whole line, then writes it at once, so each write is one line.
pub struct RedactingWriter<W>(pub W);

impl<W: io::Write> io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Makes [`RedactingWriter`]s over standard output, for the log layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedactingStdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStdout {
    type Writer = RedactingWriter<io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(io::stdout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_go() {
        assert_eq!(redact("mail to carol.customer@example.com failed"), "mail to [email] failed");
        assert_eq!(redact("user=carol%40example.com;x=1"), "user=[email];x=1");
        assert_eq!(redact("<a@b.co>."), "<[email]>.");
        // Not addresses.
        assert_eq!(redact("@ home"), "@ home");
        assert_eq!(redact("v1@2"), "v1@2");
    }

    #[test]
    fn card_numbers_go_whatever_their_spacing() {
        for card in ["4242424242424242", "4242 4242 4242 4242", "4000-0000-0000-0002", "378282246310005"] {
            assert_eq!(redact(&format!("card {card} declined")), "card [card] declined", "{card}");
        }
        assert_eq!(redact(r#"{"number":"4000000000000119"}"#), r#"{"number":"[card]"}"#);
        // Found by the fuzzer: a number right after the card hid it.
        assert_eq!(redact("5001005000008 1"), "[card] 1");
        assert_eq!(redact("1 4242 4242 4242 4242 2 items"), "1 [card] 2 items");
        assert_eq!(redact("0000000000000 0a"), "[card] 0a");
    }

    #[test]
    fn ids_and_numbers_that_are_no_cards_stay() {
        for text in [
            "trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
            "order 018f4a2c-1d5e-7b3a-9c1d-2e3f4a5b6c7d",
            "amount 12345 cents",
            "1234567890123", // fails Luhn
            "seq 42 of 4242424242424242424242",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn labelled_cvvs_go() {
        assert_eq!(redact(r#"{"cvv":"123","expiry":"12/34"}"#), r#"{"cvv":"[cvv]","expiry":"12/34"}"#);
        assert_eq!(redact("CVC: 9876"), "CVC: [cvv]");
        assert_eq!(redact("cvv required"), "cvv required");
    }

    #[test]
    fn secret_keys_lose_their_values() {
        assert_eq!(redact_value("payment.card.cvv", "123"), REDACTED);
        assert_eq!(redact_value("customer.email", "x"), REDACTED);
        assert_eq!(redact_value("payment.card_last4", "4242"), "4242");
        assert_eq!(redact_value("messaging.destination.name", "svc.payment.charge"), "svc.payment.charge");
    }

    #[test]
    fn the_quick_test_lets_through_only_what_holds_nothing() {
        for clean in ["process orders.confirmed", "trace_id=4bf92f3577b34da6a3ce929d0e0e4736", "order 42 of 1234"] {
            assert!(matches!(redact(clean), Cow::Borrowed(_)), "{clean}");
        }
        for suspect in ["a@b.co", "x%40y.z", "CVV", "4242 4242 4242 4242", "1234567890123"] {
            assert!(might_hold_secret(suspect.as_bytes()), "{suspect}");
        }
    }
}
