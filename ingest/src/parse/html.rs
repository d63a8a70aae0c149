//! HTML via html5ever (through scraper): visible content only, page chrome dropped.

use ego_tree::iter::Edge;
use scraper::{ElementRef, Html, Node};

use super::builder::{clean_title, collapse_whitespace, DocBuilder, HeadingStack};
use super::ParsedDocument;

/// Elements whose whole subtree is boilerplate or not text.
const DROPPED: &[&str] = &[
    "head", "script", "style", "nav", "header", "footer", "aside", "noscript", "form", "template", "svg", "iframe",
    "object", "canvas", "button", "select", "dialog", "math",
];

/// Landmark roles that mean the same as the dropped elements.
const DROPPED_ROLES: &[&str] = &["navigation", "banner", "contentinfo", "complementary", "search"];

/// Elements that end one text block and begin another.
const BLOCK_LEVEL: &[&str] = &[
    "p",
    "li",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "div",
    "section",
    "article",
    "main",
    "body",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "caption",
    "ul",
    "ol",
    "dl",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "hr",
    "br",
    "fieldset",
    "legend",
    "center",
];

pub(crate) fn parse(source: &str) -> ParsedDocument {
    let html = Html::parse_document(source);
    let mut w = Walker::default();
    // `traverse` is iterative, so deeply nested markup cannot overflow the stack.
    for edge in html.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(el) => {
                    let name = el.name();
                    if w.skip_depth > 0 || is_dropped(name, el.attr("role"), el.attr("hidden").is_some()) {
                        if name == "head" {
                            w.html_title = ElementRef::wrap(node).and_then(find_title);
                        }
                        w.skip_depth += 1;
                        continue;
                    }
                    w.open(name);
                }
                Node::Text(t) if w.skip_depth == 0 => w.buf.push_str(&t[..]),
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(el) = node.value() {
                    if w.skip_depth > 0 {
                        w.skip_depth -= 1;
                    } else {
                        w.close(el.name());
                    }
                }
            }
        }
    }
    w.flush();
    let title = w.html_title.take().or(w.first_h1.take());
    w.doc.finish(title)
}

fn is_dropped(name: &str, role: Option<&str>, hidden: bool) -> bool {
    hidden || DROPPED.contains(&name) || role.is_some_and(|r| DROPPED_ROLES.contains(&r))
}

fn find_title(head: ElementRef) -> Option<String> {
    head.descendants()
        .filter_map(ElementRef::wrap)
        .find(|e| e.value().name() == "title")
        .and_then(|t| clean_title(&t.text().collect::<String>()))
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

#[derive(Default)]
struct Walker {
    doc: DocBuilder,
    headings: HeadingStack,
    buf: String,
    /// Depth inside a dropped subtree (0 = visible).
    skip_depth: usize,
    /// Depth inside `<pre>`, whose line breaks are content.
    pre_depth: usize,
    heading: Option<u8>,
    html_title: Option<String>,
    first_h1: Option<String>,
}

impl Walker {
    fn open(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            self.flush();
            self.heading = Some(level);
        } else if name == "td" || name == "th" {
            // A row is one block with its cells separated, so the columns stay apart.
            if !self.buf.trim().is_empty() {
                self.buf.push_str(" | ");
            }
        } else if BLOCK_LEVEL.contains(&name) {
            self.flush();
            if name == "pre" {
                self.pre_depth += 1;
            }
        }
    }

    fn close(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            let text = collapse_whitespace(&self.buf);
            self.buf.clear();
            // A stray nested heading end is ignored; html5ever normally prevents it.
            let level = self.heading.take().unwrap_or(level);
            if text.is_empty() {
                return;
            }
            if level == 1 && self.first_h1.is_none() {
                self.first_h1 = clean_title(&text);
            }
            self.headings.enter(level, text.clone());
            self.doc.push(&text, None, self.headings.path(), true);
        } else if BLOCK_LEVEL.contains(&name) {
            self.flush();
            if name == "pre" {
                self.pre_depth = self.pre_depth.saturating_sub(1);
            }
        }
    }

    fn flush(&mut self) {
        if self.heading.is_some() {
            // Block elements inside a heading do not split it.
            return;
        }
        let text = if self.pre_depth > 0 {
            self.buf.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n")
        } else {
            collapse_whitespace(&self.buf)
        };
        self.doc.push(&text, None, self.headings.path(), false);
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_content_drops_chrome() {
        let html = r#"<!doctype html><html><head><title> The  Title </title><style>.x{}</style></head>
<body><header>Site banner</header><nav><a>Home</a></nav>
<main><h1>Main <em>heading</em></h1><p>First   para
 text.</p><script>var secret = 1;</script>
<h2>Sub</h2><ul><li>item one</li><li>item <b>two</b></li></ul>
<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
<pre>line 1
   line 2</pre><div hidden>invisible</div><div role="navigation">menu</div>
<h1>Other</h1><p>More.</p></main><aside>Sponsored</aside><footer>Copyright</footer></body></html>"#;
        let doc = super::parse(html);
        let blocks: Vec<(&str, Vec<String>, bool)> =
            doc.blocks.iter().map(|b| (&doc.text[b.start..b.end], b.heading_path.clone(), b.is_heading)).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            blocks,
            vec![
                ("Main heading", s(&["Main heading"]), true),
                ("First para text.", s(&["Main heading"]), false),
                ("Sub", s(&["Main heading", "Sub"]), true),
                ("item one", s(&["Main heading", "Sub"]), false),
                ("item two", s(&["Main heading", "Sub"]), false),
                ("k | v", s(&["Main heading", "Sub"]), false),
                ("a | 1", s(&["Main heading", "Sub"]), false),
                ("line 1\n   line 2", s(&["Main heading", "Sub"]), false),
                ("Other", s(&["Other"]), true),
                ("More.", s(&["Other"]), false),
            ]
        );
        assert_eq!(doc.title.as_deref(), Some("The Title"));
        for junk in ["Site banner", "Home", "secret", "invisible", "menu", "Sponsored", "Copyright", ".x"] {
            assert!(!doc.text.contains(junk), "{junk:?} leaked into {:?}", doc.text);
        }
    }

    #[test]
    fn title_falls_back_to_h1() {
        let doc = super::parse("<body><p>intro</p><h1>Heading One</h1><p>x</p></body>");
        assert_eq!(doc.title.as_deref(), Some("Heading One"));
    }
}
