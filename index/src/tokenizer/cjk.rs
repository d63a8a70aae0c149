//! The analysis of Han, kana and Hangul runs: overlapping character bigrams plus single
//! characters, as Lucene's CJKAnalyzer with unigrams does; and the folding of traditional
//! Chinese characters to simplified ones.
//!
//! Those scripts write no spaces between words. Bigrams need no dictionary, so they work the
//! same on simplified and traditional Chinese, Japanese, Korean, names, jargon and words no
//! dictionary knows; single characters let a one-character word or query match.

use std::collections::HashMap;
use std::sync::LazyLock;

use tantivy::tokenizer::Token;
use unicode_script::{Script, ScriptExtension, UnicodeScript};

use super::{push_token, Folded};

/// Whether `c` is a letter or number of a CJK script (Han, kana, Hangul, Bopomofo): text that
/// puts no spaces between words. Script extensions, not
/// scripts, so that the kana prolonged sound mark 'ー' (script Common, used by both kanas)
/// belongs to its run; CJK punctuation is neither letter nor number and separates runs.
pub fn is_cjk(c: char) -> bool {
    if c.is_ascii() || !c.is_alphanumeric() {
        return false;
    }
    let ext = c.script_extension();
    !ext.is_common()
        && !ext.is_inherited()
        && [Script::Han, Script::Hiragana, Script::Katakana, Script::Hangul, Script::Bopomofo]
            .into_iter()
            .any(|s| !ext.intersection(ScriptExtension::from(s)).is_empty())
}

/// Unigrams and bigrams of one run, in order of their offsets.
pub(super) fn split(run: &[Folded], tokens: &mut Vec<Token>) {
    for (i, f) in run.iter().enumerate() {
        push_token(tokens, f.c.to_string(), f.from, f.to);
        if let Some(next) = run.get(i + 1) {
            push_token(tokens, [f.c, next.c].iter().collect(), f.from, next.to);
        }
    }
}

/// The simplified form of a traditional Chinese character, or the character itself (OpenCC's
/// table, character by character): the folding the keyword analysis applies.
pub fn fold(c: char) -> char {
    if (c as u32) < 0x3400 {
        return c;
    }
    T2S.get(&c).copied().unwrap_or(c)
}

/// Traditional → simplified, character by character: OpenCC's table through ferrous-opencc.
/// By character rather than by phrase so that a character folds the same wherever it stands,
/// in a passage and in a query, and the folded text keeps its length (offsets stay exact).
static T2S: LazyLock<HashMap<char, char>> = LazyLock::new(|| {
    let opencc = match ferrous_opencc::OpenCC::from_config(ferrous_opencc::config::BuiltinConfig::T2s) {
        Ok(o) => o,
        Err(e) => {
            // Built-in tables: this cannot fail short of a broken build; search still works,
            // only without folding.
            tracing::error!(error = %e, "OpenCC t2s tables unavailable; traditional Chinese is not folded");
            return HashMap::new();
        }
    };
    // Every ideograph the tables can hold, one per line: a line break ends any phrase match, so
    // each converts on its own, and one call converts them all.
    let ranges = [0x3400..=0x4DBF, 0x4E00..=0x9FFF, 0xF900..=0xFAFF, 0x20000..=0x323AF];
    let source: Vec<char> = ranges.into_iter().flatten().filter_map(char::from_u32).collect();
    let text: String = source.iter().flat_map(|&c| [c, '\n']).collect();
    let converted = opencc.convert(&text);
    let mut table = HashMap::new();
    for (&from, line) in source.iter().zip(converted.split('\n')) {
        let mut chars = line.chars();
        if let (Some(to), None) = (chars.next(), chars.next()) {
            if to != from {
                table.insert(from, to);
            }
        }
    }
    table
});

#[cfg(test)]
mod tests {
    use super::super::tests::{sorted, terms};
    use super::*;

    #[test]
    fn runs_become_bigrams_and_single_characters() {
        assert_eq!(terms("数据库"), sorted(&["数", "据", "库", "数据", "据库"]));
        assert_eq!(terms("库"), sorted(&["库"]));
        // Punctuation, spaces and other scripts end a run.
        assert_eq!(terms("中文。日本"), sorted(&["中", "文", "中文", "日", "本", "日本"]));
        // Kana, with the prolonged sound mark inside the run, and Hangul.
        assert_eq!(terms("コーヒー"), sorted(&["コ", "ー", "ヒ", "ー", "コー", "ーヒ", "ヒー"]));
        assert_eq!(terms("한국어"), sorted(&["한", "국", "어", "한국", "국어"]));
    }

    #[test]
    fn traditional_folds_to_simplified_by_character() {
        assert_eq!(fold('學'), '学');
        assert_eq!(fold('灣'), '湾');
        assert_eq!(fold('学'), '学');
        assert_eq!(fold('a'), 'a');
        // Simplified text is left as it is.
        assert!("简体中文的句子".chars().all(|c| fold(c) == c));
        assert!(T2S.len() > 2000, "{} entries", T2S.len());
    }
}
