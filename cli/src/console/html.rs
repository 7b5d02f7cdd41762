//! Text into HTML. Everything the console writes that it did not write
//! itself (span names and attributes, alert messages, the gateway's answers,
//! what a user typed) goes through [`text`]: secrets scrubbed by the one
//! scrubber of the project, then escaped.
//!
//! A five-character escaper rather than a crate: the console only writes
//! text into element content and double-quoted attribute values, where
//! escaping `& < > " '` is all that is needed, and it is tested below.

use std::borrow::Cow;

/// `raw` escaped for element content and quoted attribute values.
pub fn escape(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Text from elsewhere, for a page: card numbers, CVVs and e-mail
/// addresses replaced (`tracehop_telemetry::redact`), control characters
/// dropped, then escaped.
pub fn text(raw: &str) -> String {
    let scrubbed = tracehop_telemetry::redact::redact(raw);
    escape(&crate::term::sanitize(&scrubbed)).into_owned()
}

/// An attribute's value as text: strings as they are, anything else as JSON;
/// then as [`text`], and wholly replaced when its key says it is secret.
pub fn attribute(key: &str, value: &serde_json::Value) -> String {
    let raw = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let scrubbed = tracehop_telemetry::redact::redact_value(key, &raw);
    escape(&crate::term::sanitize(&scrubbed)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_characters_and_nothing_else() {
        assert_eq!(escape("plain ✓ text"), "plain ✓ text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn text_scrubs_secrets_before_escaping() {
        let shown = text("card 4242 4242 4242 4242 of carol@example.com <b>\x1b[2J");
        assert!(!shown.contains("4242"), "{shown}");
        assert!(!shown.contains("carol@example.com"), "{shown}");
        assert!(shown.contains("[card]") && shown.contains("[email]"), "{shown}");
        assert!(shown.ends_with("&lt;b&gt;[2J"), "{shown}");
    }

    #[test]
    fn a_secret_attribute_is_replaced_whole() {
        let shown = attribute("customer.email", &serde_json::json!("x"));
        assert_eq!(shown, "[redacted]");
        assert_eq!(attribute("http.response.status_code", &serde_json::json!(201)), "201");
    }
}
