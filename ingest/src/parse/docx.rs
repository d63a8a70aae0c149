//! Word documents (DOCX): paragraphs under the heading path their Heading 1–6 styles make,
//! list items, tables as "header: value" rows, footnotes at the end. Headers and footers
//! live in parts of their own and are never read.

use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::builder::{collapse_whitespace, DocBuilder, HeadingStack};
use super::xml::{attr, entity};
use super::ParsedDocument;
use crate::archive::Package;

/// Deepest heading level kept as a heading; Word's Heading 7–9 read as body text.
const MAX_HEADING_LEVEL: u8 = 6;

pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedDocument, String> {
    let mut pkg = Package::open(bytes)?;
    let body = pkg.read_text("word/document.xml")?.ok_or("the package has no word/document.xml")?;
    let styles = match pkg.read_text("word/styles.xml")? {
        Some(xml) => heading_styles(&xml),
        None => HashMap::new(),
    };
    let title = pkg.read_text("docProps/core.xml")?.and_then(|xml| core_title(&xml));
    let mut out = Emitter { doc: DocBuilder::default(), headings: HeadingStack::default(), title };
    walk(&body, &styles, &mut out, false)?;
    if let Some(notes) = pkg.read_text("word/footnotes.xml")? {
        walk(&notes, &styles, &mut out, true)?;
    }
    let Emitter { doc, title, .. } = out;
    Ok(doc.finish(title))
}

struct Emitter {
    doc: DocBuilder,
    headings: HeadingStack,
    title: Option<String>,
}

/// What a paragraph style makes of its paragraphs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StyleKind {
    Heading(u8),
    Title,
    /// A list style ("List Bullet"): its paragraphs are list items.
    List,
}

/// Style id → kind, from the names Word gives its built-in styles ("heading 1", "Title")
/// and from outline levels.
fn heading_styles(xml: &str) -> HashMap<String, StyleKind> {
    let mut out = HashMap::new();
    let mut reader = Reader::from_str(xml);
    let mut current: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                "style" => current = attr(&e, "styleId"),
                "name" => {
                    if let (Some(id), Some(name)) = (&current, attr(&e, "val")) {
                        if let Some(kind) = kind_from_name(&name) {
                            out.insert(id.clone(), kind);
                        }
                    }
                }
                "numPr" => {
                    if let Some(id) = &current {
                        out.entry(id.clone()).or_insert(StyleKind::List);
                    }
                }
                "outlineLvl" => {
                    if let (Some(id), Some(level)) = (&current, attr(&e, "val").and_then(|v| v.parse::<u8>().ok())) {
                        if level < MAX_HEADING_LEVEL {
                            out.entry(id.clone()).or_insert(StyleKind::Heading(level + 1));
                        }
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

fn kind_from_name(name: &str) -> Option<StyleKind> {
    let lower = name.to_ascii_lowercase().replace(' ', "");
    if lower == "title" {
        return Some(StyleKind::Title);
    }
    if lower.starts_with("list") && !lower.starts_with("listparagraph") {
        return Some(StyleKind::List);
    }
    let level: u8 = lower.strip_prefix("heading")?.parse().ok()?;
    (1..=MAX_HEADING_LEVEL).contains(&level).then_some(StyleKind::Heading(level))
}

/// dc:title of docProps/core.xml.
pub(crate) fn core_title(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut inside = false;
    let mut title = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == "title" => inside = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == "title" => break,
            Ok(Event::Text(t)) if inside => title.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) if inside => title.extend(entity(&r)),
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    let title = collapse_whitespace(&title);
    (!title.is_empty()).then_some(title)
}

#[derive(Default)]
struct Para {
    text: String,
    style: Option<String>,
    outline: Option<u8>,
    list: bool,
}

#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
}

/// Walks document.xml (or footnotes.xml, `footnotes` set) emitting blocks.
fn walk(xml: &str, styles: &HashMap<String, StyleKind>, out: &mut Emitter, footnotes: bool) -> Result<(), String> {
    let mut reader = Reader::from_str(xml);
    let mut paras: Vec<Para> = Vec::new();
    let mut tables: Vec<Table> = Vec::new();
    let mut in_text = false;
    let mut in_ppr = false;
    // Depth inside elements whose text must not be read (alternate content fallbacks,
    // separator footnotes).
    let mut skip = 0usize;
    let mut note_path: Vec<String> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|e| format!("the document XML is malformed: {e}"))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                if skip > 0 || name == "Fallback" || (name == "footnote" && attr(&e, "type").is_some()) {
                    skip += 1;
                    continue;
                }
                match name {
                    "p" => paras.push(Para::default()),
                    "pPr" => in_ppr = true,
                    "t" => in_text = true,
                    "tbl" => tables.push(Table::default()),
                    "tr" => {
                        if let Some(t) = tables.last_mut() {
                            t.row.clear();
                        }
                    }
                    "tc" => {
                        if let Some(t) = tables.last_mut() {
                            t.cell.clear();
                        }
                    }
                    "footnote" if footnotes => {
                        let id = attr(&e, "id").unwrap_or_default();
                        note_path = vec!["Footnotes".to_string(), format!("Footnote {id}")];
                    }
                    _ => {}
                }
            }
            Event::Empty(e) => {
                if skip > 0 {
                    continue;
                }
                let name = e.local_name();
                let p = paras.last_mut();
                match (name.as_ref(), p) {
                    ("pStyle", Some(p)) => p.style = attr(&e, "val"),
                    ("outlineLvl", Some(p)) => p.outline = attr(&e, "val").and_then(|v| v.parse().ok()),
                    ("numPr", Some(p)) => p.list = true,
                    ("tab", Some(p)) if !in_ppr => p.text.push('\t'),
                    ("br" | "cr", Some(p)) => p.text.push(' '),
                    _ => {}
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                match name {
                    "t" => in_text = false,
                    "pPr" => in_ppr = false,
                    "numPr" => {
                        if let Some(p) = paras.last_mut() {
                            p.list = true;
                        }
                    }
                    "p" => {
                        if let Some(p) = paras.pop() {
                            finish_paragraph(p, styles, &mut tables, out, footnotes.then_some(note_path.as_slice()));
                        }
                    }
                    "tc" => {
                        if let Some(t) = tables.last_mut() {
                            let cell = collapse_whitespace(&t.cell);
                            t.row.push(cell);
                        }
                    }
                    "tr" => {
                        if let Some(t) = tables.last_mut() {
                            let row = std::mem::take(&mut t.row);
                            t.rows.push(row);
                        }
                    }
                    "tbl" => {
                        if let Some(t) = tables.pop() {
                            let rows = table_rows(&t.rows);
                            match tables.last_mut() {
                                // A nested table reads as text of the cell holding it.
                                Some(outer) => {
                                    outer.cell.push(' ');
                                    outer.cell.push_str(&rows.join(" "));
                                }
                                None => {
                                    for row in rows {
                                        out.doc.push(&row, None, out.headings.path(), false);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_text && skip == 0 => {
                if let Some(p) = paras.last_mut() {
                    p.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) if in_text && skip == 0 => {
                if let (Some(p), Some(c)) = (paras.last_mut(), entity(&r)) {
                    p.text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(())
}

fn finish_paragraph(
    p: Para,
    styles: &HashMap<String, StyleKind>,
    tables: &mut [Table],
    out: &mut Emitter,
    note_path: Option<&[String]>,
) {
    let text = collapse_whitespace(&p.text);
    if text.is_empty() {
        return;
    }
    if let Some(t) = tables.last_mut() {
        if !t.cell.is_empty() {
            t.cell.push(' ');
        }
        t.cell.push_str(&text);
        return;
    }
    if let Some(path) = note_path {
        out.doc.push(&text, None, path, false);
        return;
    }
    let kind = p
        .style
        .as_deref()
        .and_then(|s| styles.get(s).copied().or_else(|| kind_from_name(s)))
        .or_else(|| p.outline.filter(|l| *l < MAX_HEADING_LEVEL).map(|l| StyleKind::Heading(l + 1)));
    match kind {
        Some(StyleKind::Heading(level)) => {
            out.headings.enter(level, text.clone());
            out.doc.push(&text, None, out.headings.path(), true);
        }
        Some(StyleKind::Title) => {
            if out.title.is_none() {
                out.title = Some(text.clone());
            }
            out.doc.push(&text, None, out.headings.path(), false);
        }
        Some(StyleKind::List) => out.doc.push(&format!("• {text}"), None, out.headings.path(), false),
        None if p.list => out.doc.push(&format!("• {text}"), None, out.headings.path(), false),
        None => out.doc.push(&text, None, out.headings.path(), false),
    }
}

/// A table as text lines: with a header row, each later row as "header: value; …"; without
/// one (a single row, or blank headers), cells joined by " | ".
pub(crate) fn table_rows(rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| r.iter().any(|c| !c.is_empty())).collect();
    let Some((header, body)) = rows.split_first() else { return Vec::new() };
    let usable_header = !body.is_empty() && header.iter().filter(|h| !h.is_empty()).count() * 2 >= header.len();
    if !usable_header {
        return rows
            .iter()
            .map(|r| r.iter().filter(|c| !c.is_empty()).cloned().collect::<Vec<_>>().join(" | "))
            .collect();
    }
    body.iter().map(|row| labelled_row(header, row)).collect()
}

/// "header: value; header: value", empty cells left out.
pub(crate) fn labelled_row(header: &[String], row: &[String]) -> String {
    let mut parts = Vec::new();
    for (i, cell) in row.iter().enumerate() {
        if cell.is_empty() {
            continue;
        }
        match header.get(i).filter(|h| !h.is_empty()) {
            Some(h) => parts.push(format!("{h}: {cell}")),
            None => parts.push(cell.clone()),
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_headers() {
        let rows = vec![
            vec!["Setting".to_string(), "Value".to_string()],
            vec!["max_jobs".to_string(), "48".to_string()],
            vec!["".to_string(), "".to_string()],
        ];
        assert_eq!(table_rows(&rows), ["Setting: max_jobs; Value: 48"]);
        assert_eq!(table_rows(&rows[..1]), ["Setting | Value"]);
    }

    #[test]
    fn style_names() {
        assert_eq!(kind_from_name("heading 2"), Some(StyleKind::Heading(2)));
        assert_eq!(kind_from_name("Heading7"), None);
        assert_eq!(kind_from_name("Title"), Some(StyleKind::Title));
        assert_eq!(kind_from_name("Normal"), None);
    }
}
