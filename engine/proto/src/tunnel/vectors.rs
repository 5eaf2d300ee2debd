//! The wire vectors of `vectors.txt` (the protocol reference's frames.md), for tests.

/// The vectors' file.
pub const FILE: &str = include_str!("vectors.txt");

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Every vector: (frame bytes, description).
pub fn all() -> Vec<(Vec<u8>, &'static str)> {
    FILE.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (bytes, what) = line.split_once(' ').expect("hex, a space, a description");
            (hex(bytes), what)
        })
        .collect()
}
