//! How a chunk reads to the indexes.

/// The text a chunk is embedded and keyword-indexed as: the document title and headings it
/// sits under, then the passage, without repeating a title the passage already starts with.
pub fn contextual_text(title: Option<&str>, headings: &[String], text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 128);
    let head = text.trim_start();
    let mut seen: Vec<&str> = Vec::new();
    for part in title.into_iter().chain(headings.iter().map(String::as_str)) {
        let part = part.trim();
        if part.is_empty() || head.starts_with(part) || seen.contains(&part) {
            continue;
        }
        seen.push(part);
        s.push_str(part);
        s.push('\n');
    }
    s.push_str(text);
    s
}
