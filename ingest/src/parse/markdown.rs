//! Markdown via pulldown-cmark: the rendered text without markup, one block per heading,
//! paragraph, list item, code block or table.

use pulldown_cmark::{Event, MetadataBlockKind, Options, Parser, Tag, TagEnd};

use super::builder::{clean_title, collapse_whitespace, DocBuilder, HeadingStack};
use super::ParsedDocument;

pub(crate) fn parse(source: &str) -> ParsedDocument {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    let mut w = Walker::default();
    for event in Parser::new_ext(source, options) {
        w.event(event);
    }
    w.flush();
    // Front matter names the document explicitly, so it beats the first heading.
    let title = w.front_matter_title.take().or(w.title.take());
    w.doc.finish(title)
}

#[derive(Default)]
struct Walker {
    doc: DocBuilder,
    headings: HeadingStack,
    /// Text of the block being read.
    buf: String,
    /// Inside a heading: its level.
    heading: Option<u8>,
    /// Code blocks and tables keep their line structure; everything else is reflowed.
    verbatim: bool,
    in_metadata: bool,
    metadata: String,
    title: Option<String>,
    front_matter_title: Option<String>,
}

impl Walker {
    fn event(&mut self, event: Event) {
        if self.in_metadata {
            match event {
                Event::Text(t) => self.metadata.push_str(&t),
                Event::End(TagEnd::MetadataBlock(_)) => {
                    self.in_metadata = false;
                    self.front_matter_title = yaml_title(&self.metadata);
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => self.buf.push_str(&t),
            Event::SoftBreak => self.buf.push(' '),
            Event::HardBreak => self.buf.push('\n'),
            Event::TaskListMarker(done) => self.buf.push_str(if done { "[x] " } else { "[ ] " }),
            // Raw HTML is markup, not content; footnote markers and rules carry no text.
            Event::Html(_) | Event::InlineHtml(_) | Event::FootnoteReference(_) | Event::Rule => {}
        }
    }

    fn start(&mut self, tag: Tag) {
        match tag {
            Tag::Heading { level, .. } => {
                self.flush();
                self.heading = Some(level as u8);
            }
            Tag::CodeBlock(_) | Tag::Table(_) => {
                self.flush();
                self.verbatim = true;
            }
            // Cells of a row are kept apart by a separator.
            Tag::TableCell if !self.buf.is_empty() && !self.buf.ends_with('\n') => self.buf.push_str(" | "),
            Tag::MetadataBlock(MetadataBlockKind::YamlStyle | MetadataBlockKind::PlusesStyle) => {
                self.flush();
                self.in_metadata = true;
                self.metadata.clear();
            }
            Tag::Paragraph
            | Tag::Item
            | Tag::List(_)
            | Tag::BlockQuote(_)
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::HtmlBlock => self.flush(),
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(_) => {
                let level = self.heading.take().unwrap_or(1);
                let text = collapse_whitespace(&self.buf);
                self.buf.clear();
                if text.is_empty() {
                    return;
                }
                if self.title.is_none() {
                    self.title = clean_title(&text);
                }
                self.headings.enter(level, text.clone());
                self.doc.push(&text, None, self.headings.path(), true);
            }
            TagEnd::TableHead | TagEnd::TableRow => self.buf.push('\n'),
            TagEnd::CodeBlock | TagEnd::Table => {
                self.flush();
                self.verbatim = false;
            }
            TagEnd::Paragraph
            | TagEnd::Item
            | TagEnd::List(_)
            | TagEnd::BlockQuote(_)
            | TagEnd::FootnoteDefinition
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::HtmlBlock => self.flush(),
            _ => {}
        }
    }

    /// Ends the current block.
    fn flush(&mut self) {
        let text = if self.verbatim {
            verbatim_lines(&self.buf)
        } else {
            // Hard breaks stay line breaks; other runs of whitespace become one space.
            self.buf.split('\n').map(collapse_whitespace).collect::<Vec<_>>().join("\n")
        };
        self.doc.push(&text, None, self.headings.path(), false);
        self.buf.clear();
    }
}

/// Trailing spaces dropped and blank lines squeezed out, line structure kept.
fn verbatim_lines(s: &str) -> String {
    s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n")
}

/// `title:` from YAML front matter, the common way static-site Markdown names itself.
fn yaml_title(meta: &str) -> Option<String> {
    meta.lines().find_map(|line| {
        let value = line.strip_prefix("title:")?.trim();
        clean_title(value.trim_matches(|c| c == '"' || c == '\''))
    })
}

#[cfg(test)]
mod tests {
    fn blocks(doc: &super::ParsedDocument) -> Vec<(&str, Vec<String>, bool)> {
        doc.blocks.iter().map(|b| (&doc.text[b.start..b.end], b.heading_path.clone(), b.is_heading)).collect()
    }

    #[test]
    fn headings_lists_code_tables() {
        let md = "Intro *para*\nwraps.\n\n# Top `code`\n\n- one\n- two\n  - nested\n\n## Sub\n\n```rust\nfn x() {}\n\n  y();\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n# Next\n\ntext <b>bold</b> [link](http://x)\n";
        let doc = super::parse(md);
        let b = blocks(&doc);
        let top = vec!["Top code".to_string()];
        let sub = vec!["Top code".to_string(), "Sub".to_string()];
        assert_eq!(b[0], ("Intro para wraps.", vec![], false));
        assert_eq!(b[1], ("Top code", top.clone(), true));
        assert_eq!(b[2], ("one", top.clone(), false));
        assert_eq!(b[3], ("two", top.clone(), false));
        assert_eq!(b[4], ("nested", top.clone(), false));
        assert_eq!(b[5], ("Sub", sub.clone(), true));
        assert_eq!(b[6], ("fn x() {}\n  y();", sub.clone(), false));
        assert_eq!(b[7], ("a | b\n1 | 2", sub.clone(), false));
        assert_eq!(b[8], ("Next", vec!["Next".to_string()], true));
        assert_eq!(b[9], ("text bold link", vec!["Next".to_string()], false));
        assert_eq!(doc.title.as_deref(), Some("Top code"));
        assert!(!doc.text.contains('#') && !doc.text.contains('*') && !doc.text.contains("```"));
    }

    #[test]
    fn title_from_front_matter_or_first_line() {
        let doc = super::parse("---\ntitle: \"Front Title\"\n---\n\nJust text.\n");
        assert_eq!(doc.title.as_deref(), Some("Front Title"));
        assert_eq!(doc.text, "Just text.");
        let doc = super::parse("First line here\nsecond.\n\nMore.");
        assert_eq!(doc.title.as_deref(), Some("First line here second."));
    }
}
