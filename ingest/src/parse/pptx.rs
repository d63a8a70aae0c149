//! PowerPoint presentations (PPTX): one section per slide in presentation order, the slide
//! title as its heading, text boxes top to bottom and left to right, tables as rows, then the
//! speaker notes. The slide number is the citation's location.

use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::builder::{collapse_whitespace, DocBuilder};
use super::docx::{core_title, table_rows};
use super::xml::{attr, entity, value};
use super::ParsedDocument;
use crate::archive::Package;

pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedDocument, String> {
    let mut pkg = Package::open(bytes)?;
    let slides = slide_parts(&mut pkg)?;
    if slides.is_empty() {
        return Err("the presentation has no slides".into());
    }
    let title = pkg.read_text("docProps/core.xml")?.and_then(|xml| core_title(&xml));
    let mut doc = DocBuilder::default();
    for (i, part) in slides.iter().enumerate() {
        let number = i + 1;
        let location = format!("slide {number}");
        let Some(xml) = pkg.read_text(part)? else { continue };
        let shapes = read_shapes(&xml)?;
        let slide_title = shapes.iter().find(|s| s.title).map(|s| s.paragraphs.join(" ")).filter(|t| !t.is_empty());
        let path = vec![slide_title.clone().unwrap_or_else(|| format!("Slide {number}"))];
        if let Some(t) = &slide_title {
            doc.push_at(t, None, Some(&location), &path, true);
        }
        for shape in shapes.iter().filter(|s| !s.title) {
            for para in &shape.paragraphs {
                doc.push_at(para, None, Some(&location), &path, false);
            }
        }
        if let Some(notes_part) = notes_part(&mut pkg, part)? {
            if let Some(xml) = pkg.read_text(&notes_part)? {
                let notes: Vec<String> = read_shapes(&xml)?
                    .into_iter()
                    .filter(|s| s.placeholder.as_deref() == Some("body"))
                    .flat_map(|s| s.paragraphs)
                    .collect();
                if !notes.is_empty() {
                    doc.push_at(&format!("Speaker notes: {}", notes.join(" ")), None, Some(&location), &path, false);
                }
            }
        }
    }
    Ok(doc.finish(title))
}

/// Slide part names in presentation order (presentation.xml's sldIdLst through its rels).
fn slide_parts(pkg: &mut Package) -> Result<Vec<String>, String> {
    let pres = pkg.read_text("ppt/presentation.xml")?.ok_or("the package has no ppt/presentation.xml")?;
    let rels = relationships(&pkg.read_text("ppt/_rels/presentation.xml.rels")?.unwrap_or_default(), "ppt");
    let mut reader = Reader::from_str(&pres);
    let mut out = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == "sldId" => {
                // The r:id attribute names the relationship; the plain id is a number.
                let target = e.attributes().flatten().filter_map(|a| value(&a)).find_map(|v| rels.get(&v).cloned());
                out.extend(target);
            }
            Ok(Event::Eof) => break,
            Err(e) => return Err(format!("ppt/presentation.xml is malformed: {e}")),
            _ => {}
        }
    }
    Ok(out)
}

/// The notes slide of a slide part, from the slide's relationships.
fn notes_part(pkg: &mut Package, slide: &str) -> Result<Option<String>, String> {
    let (dir, file) = slide.rsplit_once('/').unwrap_or(("", slide));
    let rels_name = format!("{dir}/_rels/{file}.rels");
    let Some(xml) = pkg.read_text(&rels_name)? else { return Ok(None) };
    let mut reader = Reader::from_str(&xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == "Relationship" => {
                let is_notes = attr(&e, "Type").is_some_and(|t| t.ends_with("/notesSlide"));
                if let (true, Some(target)) = (is_notes, attr(&e, "Target")) {
                    return Ok(Some(resolve(dir, &target)));
                }
            }
            Ok(Event::Eof) | Err(_) => return Ok(None),
            _ => {}
        }
    }
}

/// Relationship id → part name, targets resolved against `base`.
fn relationships(xml: &str, base: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) if e.local_name().as_ref() == "Relationship" => {
                if let (Some(id), Some(target)) = (attr(&e, "Id"), attr(&e, "Target")) {
                    out.insert(id, resolve(base, &target));
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

/// A relationship target relative to `base` ("../notesSlides/x.xml"), or absolute ("/ppt/…").
fn resolve(base: &str, target: &str) -> String {
    if let Some(abs) = target.strip_prefix('/') {
        return abs.to_string();
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for piece in target.split('/') {
        match piece {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[derive(Debug, Default)]
struct Shape {
    title: bool,
    placeholder: Option<String>,
    /// Position on the slide (EMU), for reading order.
    y: i64,
    x: i64,
    paragraphs: Vec<String>,
}

/// The text shapes of a slide (or notes slide) in reading order: top to bottom, then left to
/// right; tables become one paragraph per row.
fn read_shapes(xml: &str) -> Result<Vec<Shape>, String> {
    let mut reader = Reader::from_str(xml);
    let mut shapes: Vec<Shape> = Vec::new();
    let mut current: Option<Shape> = None;
    let mut depth_in_shape = 0usize;
    let mut para = String::new();
    let mut in_text = false;
    let mut table: Option<(Vec<Vec<String>>, Vec<String>, String)> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("a slide's XML is malformed: {e}"))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    "sp" | "graphicFrame" if current.is_none() => {
                        current = Some(Shape::default());
                        depth_in_shape = 0;
                    }
                    "t" => in_text = true,
                    "p" => para.clear(),
                    "tbl" => table = Some(Default::default()),
                    "tc" => {
                        if let Some(t) = table.as_mut() {
                            t.2.clear();
                        }
                    }
                    _ => {}
                }
                if current.is_some() {
                    depth_in_shape += 1;
                }
            }
            Event::Empty(e) => {
                let name = e.local_name();
                if let Some(s) = current.as_mut() {
                    match name.as_ref() {
                        "ph" => {
                            let kind = attr(&e, "type");
                            s.title = matches!(kind.as_deref(), Some("title" | "ctrTitle"));
                            s.placeholder = Some(kind.unwrap_or_else(|| "body".into()));
                        }
                        "off" if s.paragraphs.is_empty() => {
                            s.x = attr(&e, "x").and_then(|v| v.parse().ok()).unwrap_or(0);
                            s.y = attr(&e, "y").and_then(|v| v.parse().ok()).unwrap_or(0);
                        }
                        "br" => para.push(' '),
                        _ => {}
                    }
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    "t" => in_text = false,
                    "p" => {
                        let text = collapse_whitespace(&para);
                        para.clear();
                        if text.is_empty() {
                        } else if let Some(t) = table.as_mut() {
                            if !t.2.is_empty() {
                                t.2.push(' ');
                            }
                            t.2.push_str(&text);
                        } else if let Some(s) = current.as_mut() {
                            s.paragraphs.push(text);
                        }
                    }
                    "tc" => {
                        if let Some(t) = table.as_mut() {
                            let cell = std::mem::take(&mut t.2);
                            t.1.push(cell);
                        }
                    }
                    "tr" => {
                        if let Some(t) = table.as_mut() {
                            let row = std::mem::take(&mut t.1);
                            t.0.push(row);
                        }
                    }
                    "tbl" => {
                        if let (Some(t), Some(s)) = (table.take(), current.as_mut()) {
                            s.paragraphs.extend(table_rows(&t.0));
                        }
                    }
                    _ => {}
                }
                if current.is_some() {
                    depth_in_shape = depth_in_shape.saturating_sub(1);
                    if depth_in_shape == 0 {
                        if let Some(s) = current.take() {
                            if !s.paragraphs.is_empty() {
                                shapes.push(s);
                            }
                        }
                    }
                }
            }
            Event::Text(t) if in_text => para.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => para.extend(entity(&r)),
            Event::Eof => break,
            _ => {}
        }
    }
    // Titles first, then the rest in reading order.
    shapes.sort_by_key(|s| (!s.title, s.y, s.x));
    Ok(shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve() {
        assert_eq!(resolve("ppt/slides", "../notesSlides/notesSlide1.xml"), "ppt/notesSlides/notesSlide1.xml");
        assert_eq!(resolve("ppt", "slides/slide2.xml"), "ppt/slides/slide2.xml");
        assert_eq!(resolve("ppt", "/ppt/slides/slide3.xml"), "ppt/slides/slide3.xml");
    }
}
