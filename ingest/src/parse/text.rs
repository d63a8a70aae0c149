//! Plain text: paragraphs are separated by blank lines.

use super::builder::DocBuilder;
use super::ParsedDocument;

pub(crate) fn parse(text: &str) -> ParsedDocument {
    let mut doc = DocBuilder::default();
    let mut para = String::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            doc.push(&para, None, &[], false);
            para.clear();
            continue;
        }
        if !para.is_empty() {
            // A line going on in lower case continues a hard-wrapped sentence: joined, so the
            // chunker does not take the wrap for a sentence end. Other breaks are kept.
            let continues = line.trim_start().starts_with(|c: char| c.is_lowercase());
            para.push(if continues { ' ' } else { '\n' });
            if continues {
                para.push_str(line.trim_start());
                continue;
            }
        }
        para.push_str(line);
    }
    doc.push(&para, None, &[], false);
    // Title: the first non-empty line, which DocBuilder picks when none is given.
    doc.finish(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paragraphs_split_at_blank_lines() {
        let doc = super::parse("\r\n  Title line  \r\n\r\nOne\n  two.\nThree\n \t\nFour.\n");
        let blocks: Vec<&str> = doc.blocks.iter().map(|b| &doc.text[b.start..b.end]).collect();
        assert_eq!(blocks, ["Title line", "One two.\nThree", "Four."]);
        assert_eq!(doc.title.as_deref(), Some("Title line"));
    }
}
