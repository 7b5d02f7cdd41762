//! What the command writes to a terminal: the one ANSI palette, the one
//! sanitizer for text from other processes, and whether colours are on.
//! Every command that prints goes through here, so that they all look alike
//! and none obeys an escape sequence hidden in a span name or an alert.

/// Failures, what is down.
pub const RED: &str = "\x1b[31m";
/// What is late.
pub const YELLOW: &str = "\x1b[33m";
/// Titles.
pub const BOLD: &str = "\x1b[1m";
/// Headings and secondary text.
pub const DIM: &str = "\x1b[2m";
/// Back to plain text.
pub const RESET: &str = "\x1b[0m";
/// Back to the start of the line, and clear it (progress bars).
pub const CLEAR_LINE: &str = "\r\x1b[2K";

/// `text` without control characters (ANSI escapes, newlines, bells): text
/// from another process is data, not escape sequences for the terminal to
/// obey.
pub fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// True when standard output is a terminal and `NO_COLOR` is unset
/// (colours on).
pub fn is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(sanitize("a\x1b[2Jb\nc\x07"), "a[2Jbc");
        assert_eq!(sanitize("plain ✓"), "plain ✓");
    }
}
