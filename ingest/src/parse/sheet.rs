//! Spreadsheets: Excel workbooks (XLSX, through calamine) and CSV/TSV. Each sheet is a
//! section; each row is read with its column headers ("Region: North; Revenue: 1200") so a
//! cell can be found by what it means. Rows are grouped into blocks whose location is the
//! sheet and the row range.

use std::io::Cursor;

use calamine::{Data, Reader as _, Xlsx};

use super::builder::{collapse_whitespace, DocBuilder};
use super::docx::{core_title, labelled_row};
use super::ParsedDocument;
use crate::archive::Package;

/// Characters of rows gathered into one block (about one chunk's worth).
const BLOCK_CHARS: usize = 700;

pub(crate) fn parse_xlsx(bytes: &[u8]) -> Result<ParsedDocument, String> {
    // calamine inflates parts itself: prove the package within the limits first.
    Package::open(bytes)?.check_all()?;
    let mut book: Xlsx<_> =
        calamine::open_workbook_from_rs(Cursor::new(bytes)).map_err(|e| format!("not a readable workbook ({e})"))?;
    let mut doc = DocBuilder::default();
    let names = book.sheet_names();
    if names.is_empty() {
        return Err("the workbook has no sheets".into());
    }
    // A workbook rarely has a title of its own; its sheet names say more than a first row.
    let title = Package::open(bytes)?
        .read_text("docProps/core.xml")?
        .and_then(|xml| core_title(&xml))
        .or_else(|| Some(names.join(", ")));
    for name in names {
        let range = book.worksheet_range(&name).map_err(|e| format!("sheet {name:?} cannot be read ({e})"))?;
        let first_row = range.start().map(|(r, _)| r as usize + 1).unwrap_or(1);
        let rows: Vec<Vec<String>> = range.rows().map(|r| r.iter().map(cell_text).collect()).collect();
        push_rows(&mut doc, Some(&name), first_row, &rows);
    }
    Ok(doc.finish(title))
}

/// CSV, or TSV when `tabs`; the title is the file's name.
pub(crate) fn parse_csv(text: &str, tabs: bool) -> Result<ParsedDocument, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(if tabs { b'\t' } else { b',' })
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("not readable as {} ({e})", if tabs { "TSV" } else { "CSV" }))?;
        rows.push(record.iter().map(collapse_whitespace).collect());
    }
    let mut doc = DocBuilder::default();
    push_rows(&mut doc, None, 1, &rows);
    // The header row names what the file holds.
    let title = rows
        .iter()
        .find(|r| r.iter().any(|c| !c.is_empty()))
        .map(|r| r.iter().filter(|c| !c.is_empty()).cloned().collect::<Vec<_>>().join(", "));
    Ok(doc.finish(title))
}

fn cell_text(d: &Data) -> String {
    match d {
        Data::Empty => String::new(),
        Data::Error(_) => String::new(),
        other => collapse_whitespace(&other.to_string()),
    }
}

/// The first non-empty row is the header; later rows are labelled with it and gathered into
/// blocks located by sheet and row numbers (1-based, as the spreadsheet shows them).
fn push_rows(doc: &mut DocBuilder, sheet: Option<&str>, first_row: usize, rows: &[Vec<String>]) {
    let mut numbered =
        rows.iter().enumerate().map(|(i, r)| (first_row + i, r)).filter(|(_, r)| r.iter().any(|c| !c.is_empty()));
    let Some((header_no, header)) = numbered.next() else { return };
    let path: Vec<String> = sheet.map(|s| vec![s.to_string()]).unwrap_or_default();
    let mut block = String::new();
    let mut span: Option<(usize, usize)> = None;
    let flush = |doc: &mut DocBuilder, block: &mut String, span: &mut Option<(usize, usize)>| {
        if let Some((a, b)) = span.take() {
            let rows = if a == b { format!("row {a}") } else { format!("rows {a}–{b}") };
            let location = match sheet {
                Some(s) => format!("sheet {s}, {rows}"),
                None => rows,
            };
            doc.push_at(block, None, Some(&location), &path, false);
        }
        block.clear();
    };
    let mut any_body = false;
    for (no, row) in numbered {
        any_body = true;
        let line = labelled_row(header, row);
        if !block.is_empty() && block.len() + line.len() > BLOCK_CHARS {
            flush(doc, &mut block, &mut span);
        }
        if !block.is_empty() {
            block.push('\n');
        }
        block.push_str(&line);
        span = Some((span.map_or(no, |(a, _)| a), no));
    }
    if !any_body {
        // A lone row is data, not a header.
        block = header.iter().filter(|c| !c.is_empty()).cloned().collect::<Vec<_>>().join(" | ");
        span = Some((header_no, header_no));
    }
    flush(doc, &mut block, &mut span);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_carry_headers_and_locations() {
        let doc =
            parse_csv("Part,Supplier,Lead time\nbolt M12,Ferrox,3 weeks\n,,\nwasher,Ferrox,1 week\n", false).unwrap();
        assert_eq!(doc.blocks.len(), 1);
        let b = &doc.blocks[0];
        assert_eq!(
            doc.block_text(b),
            "Part: bolt M12; Supplier: Ferrox; Lead time: 3 weeks\nPart: washer; Supplier: Ferrox; Lead time: 1 week"
        );
        assert_eq!(b.location.as_deref(), Some("rows 2–4"));
        let tsv = parse_csv("a\tb\n1\t2\n", true).unwrap();
        assert_eq!(tsv.block_text(&tsv.blocks[0]), "a: 1; b: 2");
    }
}
