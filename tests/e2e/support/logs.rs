//! Reading the engine's log: ANSI stripping, error and warning lines, sides.

/// Removes ANSI escape sequences (`ESC [ ... letter`). The log checks look at the text; a
/// separate test checks that a log written to a file has no such sequences at all.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A TOML (basic) string literal for `s`.
pub fn q(s: impl std::fmt::Display) -> String {
    format!("{:?}", s.to_string())
}

/// The lines of a log that start with `error: `.
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// Whether a log line carries `side=SIDE` (text format, quoted or not, or JSON).
pub fn line_has_side(line: &str, side: &str) -> bool {
    line.contains(&format!("side={side}"))
        || line.contains(&format!("side=\"{side}\""))
        || line.contains(&format!("\"side\":\"{side}\""))
}

/// The lines of `log` at warn level naming `side`.
pub fn warn_lines_with_side<'a>(log: &'a str, side: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| (l.contains("WARN") || l.contains("\"warn\"")) && line_has_side(l, side))
        .collect()
}
