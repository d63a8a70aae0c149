//! Small helpers over quick-xml for the Office parsers: attributes and entities by name.

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesRef, BytesStart};
use quick_xml::XmlVersion;

/// An attribute's unescaped value, matched by local name (`w:val` and `val` alike).
pub(crate) fn attr(e: &BytesStart, local: &str) -> Option<String> {
    e.attributes().flatten().find(|a| a.key.local_name().as_ref() == local).and_then(|a| value(&a))
}

/// An attribute's value with entities resolved.
pub(crate) fn value(a: &Attribute) -> Option<String> {
    a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned())
}

/// The character an entity or character reference stands for.
pub(crate) fn entity(r: &BytesRef) -> Option<char> {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return Some(c);
    }
    match r.xml10_content().as_ref() {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}
