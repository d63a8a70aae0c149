//! The keyword index's text analysis, the same for indexed text and for queries.
//!
//! Text is first folded character by character: NFKC (full-width and other compatibility
//! forms become the plain ones), lowercase, and traditional Chinese characters to simplified
//! ones, so that either script finds the other. It is then split into runs by script. Han,
//! kana and Hangul runs become overlapping character bigrams plus single characters
//! ([`cjk`]): those scripts write no spaces between words. Every other run goes through the
//! English word-delimiter analysis ([`word_delimiter`]); then the Snowball English stop list
//! and the English (Porter2) stemmer apply, which leave CJK terms as they are.

mod cjk;
mod word_delimiter;

pub use cjk::{fold as to_simplified, is_cjk};

use std::vec::Drain;

use tantivy::tokenizer::{Language, Stemmer, StopWordFilter, TextAnalyzer, Token, TokenStream, Tokenizer};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// The name the analyzer is registered and stored in an index's schema under. Change it
/// whenever analysis changes: an index built under another name is refused and rebuilt.
pub(crate) const ANALYZER: &str = "kb_script1";

/// Snowball's English stop list (snowballstem.org), less the forms with an apostrophe, which
/// never survive tokenization anyway.
const STOP_WORDS: &str = "\
    a about above after again against all am an and any are as at be because been before being below \
    between both but by cannot could did do does doing down during each few for from further had has \
    have having he her here hers herself him himself his how i if in into is it its itself me more most \
    my myself no nor not of off on once only or other ought our ours ourselves out over own same she \
    should so some such than that the their theirs them themselves then there these they this those \
    through to too under until up us very was we were what when where which while who whom why with \
    would you your yours yourself yourselves";

/// The analyzer of both indexed text and queries.
pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ScriptTokenizer::default())
        .filter(StopWordFilter::remove(STOP_WORDS.split_whitespace().map(str::to_owned)))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// A folded character with the byte span of the source character it comes from: offsets stay
/// on the source text.
#[derive(Clone, Copy)]
struct Folded {
    c: char,
    from: usize,
    to: usize,
}

/// Folds the text, splits it into script runs and hands each run to its analysis.
#[derive(Clone, Default)]
pub struct ScriptTokenizer {
    chars: Vec<Folded>,
    tokens: Vec<Token>,
}

pub struct ScriptTokenStream<'a> {
    tokens: Drain<'a, Token>,
    token: Token,
}

impl Tokenizer for ScriptTokenizer {
    type TokenStream<'a> = ScriptTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ScriptTokenStream<'a> {
        self.fold(text);
        self.tokens.clear();
        let chars = &self.chars;
        let mut start = 0;
        while start < chars.len() {
            let is_cjk = cjk::is_cjk(chars[start].c);
            let end = chars[start..].iter().position(|f| cjk::is_cjk(f.c) != is_cjk).map_or(chars.len(), |n| start + n);
            if is_cjk {
                cjk::split(&chars[start..end], &mut self.tokens);
            } else {
                word_delimiter::split(&chars[start..end], &mut self.tokens);
            }
            start = end;
        }
        ScriptTokenStream { tokens: self.tokens.drain(..), token: Token::default() }
    }
}

impl ScriptTokenizer {
    /// NFKC per source character (so every folded character keeps its source span), then
    /// lowercase, traditional to simplified Chinese, and each Greek letter as "-name-".
    fn fold(&mut self, text: &str) {
        self.chars.clear();
        let chars = &mut self.chars;
        // Runs of '-' collapse to one, so "TNF-α" ("tnf--alpha-") links like "TNFα".
        let mut push = |c: char, from: usize, to: usize| {
            if !(c == '-' && chars.last().is_some_and(|p| p.c == '-')) {
                chars.push(Folded { c, from, to });
            }
        };
        let mut fold_one = |c: char, from: usize, to: usize| {
            for c in c.to_lowercase() {
                match word_delimiter::greek_name(c) {
                    Some(name) => {
                        push('-', from, to);
                        name.chars().for_each(|n| push(n, from, to));
                        push('-', from, to);
                    }
                    None => push(cjk::fold(c), from, to),
                }
            }
        };
        for (from, c) in text.char_indices() {
            let to = from + c.len_utf8();
            let normal = c.is_ascii() || is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes;
            // A symbol that NFKC spells with letters ("™" → "TM", "㎏" → "kg") would glue onto
            // the word before it: such symbols stay what they were, separators.
            if normal || (!c.is_alphanumeric() && std::iter::once(c).nfkc().nth(1).is_some()) {
                fold_one(c, from, to);
            } else {
                std::iter::once(c).nfkc().for_each(|n| fold_one(n, from, to));
            }
        }
    }
}

/// Appends a token spanning source bytes `from..to`, at the next position.
fn push_token(tokens: &mut Vec<Token>, text: String, from: usize, to: usize) {
    let position = tokens.len();
    tokens.push(Token { offset_from: from, offset_to: to, position, text, position_length: 1 });
}

impl TokenStream for ScriptTokenStream<'_> {
    fn advance(&mut self) -> bool {
        match self.tokens.next() {
            Some(t) => {
                self.token = t;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn terms(text: &str) -> Vec<String> {
        let mut a = analyzer();
        let mut stream = a.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out.sort();
        out
    }

    pub(super) fn sorted(words: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn scripts_split_into_runs_with_their_own_analysis() {
        // The English run is stemmed and loses its stop word; the Han run becomes bigrams and
        // single characters; nothing links across the change of script.
        assert_eq!(terms("the running机器学习"), sorted(&["run", "机", "器", "学", "习", "机器", "器学", "学习"]));
        assert_eq!(terms("IL-6水平"), sorted(&["il", "6", "il6", "水", "平", "水平"]));
    }

    #[test]
    fn full_width_forms_and_traditional_characters_fold() {
        // Full-width Latin and digits are plain ASCII after NFKC.
        assert_eq!(terms("ＩＬ－６"), terms("IL-6"));
        assert_eq!(terms("ﬁsh"), terms("fish"));
        // A symbol spelled with letters stays a separator rather than gluing onto a word.
        assert_eq!(terms("Prozac™"), sorted(&["prozac"]));
        // Half-width katakana are the full-width ones.
        assert_eq!(terms("ｶﾀｶﾅ"), terms("カタカナ"));
        // Traditional and simplified Chinese give the same terms.
        assert_eq!(terms("機器學習與資料庫"), terms("机器学习与资料库"));
        assert_eq!(terms("臺灣的經濟發展"), terms("台湾的经济发展"));
    }

    #[test]
    fn offsets_point_at_the_source_and_positions_increase() {
        let text = "Anti-TNF-α (IL6) 療法";
        let mut tok = ScriptTokenizer::default();
        let mut stream = tok.token_stream(text);
        let mut got = Vec::new();
        while stream.advance() {
            let t = stream.token();
            got.push((t.text.clone(), &text[t.offset_from..t.offset_to], t.position));
        }
        let want = [
            ("antitnfalpha", "Anti-TNF-α"),
            ("anti", "Anti"),
            ("tnf", "TNF"),
            ("alpha", "α"),
            ("il6", "IL6"),
            ("il", "IL"),
            ("6", "6"),
            ("疗", "療"),
            ("疗法", "療法"),
            ("法", "法"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (i, ((text, span, pos), (wt, ws))) in got.iter().zip(want).enumerate() {
            assert_eq!((text.as_str(), *span, *pos), (wt, ws, i));
        }
    }
}
