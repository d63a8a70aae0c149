//! Every sentence of a generated answer checked against the passages it cites: at least 80%
//! of its content words must occur in one place of a passage (a sentence and the one after
//! it), and every number, every name and every word it adds to the question there too (the
//! 20% allowance is for the question's own words rephrased: an answer word that is not in the
//! source is how a small model turns "three of his ribs were broken" into "his ribs were
//! damaged"). A sentence that fails is dropped; one
//! without a marker gets the marker of a passage that supports it, or is dropped; one that
//! only repeats the question says nothing and is dropped.
//!
//! One place, not the whole passage: a small model recombines a passage's words into claims
//! it never makes ("John Elway is the current quarterback of the Broncos" from a passage
//! naming Elway as general manager and Manning as quarterback), and such a sentence holds
//! every one of its words somewhere in the passage.

use std::collections::HashSet;

use super::text::{self, cited_numbers, content_words, sentences, strip_markers, words};

/// The share of a sentence's content words its source must hold.
pub const MIN_SUPPORT: f32 = 0.8;
/// Content words of a sentence its source may lack at most, however long the sentence: a
/// long sentence must not carry a whole invented clause within its 20%.
pub const MAX_UNSUPPORTED: usize = 2;

/// What checking a draft left.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The supported sentences, each ending with its marker(s).
    pub text: String,
    /// The passage numbers the kept sentences cite, in order of first citation.
    pub cited: Vec<usize>,
    /// Sentences dropped as unsupported or empty.
    pub dropped: usize,
    /// Whether the kept text says something the question does not.
    pub informative: bool,
}

/// A passage as the checker sees it: its words, lower-cased, and the places a claim may
/// come from (each sentence with the one after it, which may name what it says "it" of).
pub struct Source {
    places: Vec<HashSet<String>>,
}

impl Source {
    pub fn new(text: &str) -> Self {
        let sentences: Vec<HashSet<String>> = sentences(text).iter().map(|s| words(s).into_iter().collect()).collect();
        let places = match sentences.len() {
            0 | 1 => sentences,
            _ => sentences.windows(2).map(|w| w[0].union(&w[1]).cloned().collect()).collect(),
        };
        Self { places }
    }
}

/// Whether the words of `sentence` (markers removed) are supported by one place of one of
/// `sources`, with every one of `novel` (the words it adds to the question) there too.
pub fn supported(sentence: &str, novel: &[String], sources: &[&Source]) -> bool {
    sources.iter().flat_map(|s| &s.places).any(|place| supported_by(sentence, novel, place))
}

fn supported_by(sentence: &str, novel: &[String], place: &HashSet<String>) -> bool {
    let has = |w: &str| place.contains(w);
    let content = content_words(sentence);
    if content.is_empty() || !novel.iter().all(|w| has(w)) {
        return false;
    }
    let found = content.iter().filter(|w| has(w)).count();
    if (found as f32) < MIN_SUPPORT * content.len() as f32 || content.len() - found > MAX_UNSUPPORTED {
        return false;
    }
    // Numbers and names are where a small model invents: each must be in the source.
    let numbers_present = content.iter().filter(|w| w.chars().any(|c| c.is_ascii_digit())).all(|w| has(w));
    let names_present = sentence
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .flat_map(words)
        .all(|w| has(&w));
    numbers_present && names_present
}

/// Checks `draft` against `sources` (source `n` is cited as `[n]`).
pub fn check(draft: &str, question: &str, sources: &[Source]) -> Checked {
    let question_words: HashSet<String> = content_words(question).into_iter().collect();
    let mut kept: Vec<String> = Vec::new();
    let mut cited: Vec<usize> = Vec::new();
    let mut dropped = 0;
    let mut informative = false;
    for sentence in sentences(draft) {
        let body = strip_markers(&sentence);
        let body = body.trim_end_matches(|c: char| {
            text::is_final_punctuation(c) || matches!(c, ',' | '，' | '、') || c.is_whitespace()
        });
        let novel: Vec<String> = content_words(body).into_iter().filter(|w| !question_words.contains(w)).collect();
        if novel.is_empty() || kept.iter().any(|k| strip_markers(k).starts_with(body)) {
            dropped += 1;
            continue;
        }
        let marked: Vec<usize> =
            cited_numbers(&sentence).into_iter().filter(|n| (1..=sources.len()).contains(n)).collect();
        let by_marks: Vec<&Source> = marked.iter().map(|n| &sources[n - 1]).collect();
        let numbers = if !marked.is_empty() && supported(body, &novel, &by_marks) {
            marked
        } else if let Some(n) = (1..=sources.len()).find(|n| supported(body, &novel, &[&sources[n - 1]])) {
            vec![n]
        } else {
            dropped += 1;
            continue;
        };
        informative = true;
        let marks = numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        kept.push(format!("{body} [{marks}]{}", text::full_stop(body)));
        for n in numbers {
            if !cited.contains(&n) {
                cited.push(n);
            }
        }
    }
    Checked { text: kept.join(" "), cited, dropped, informative }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_from_different_places_make_no_claim() {
        let s = [Source::new(
            "John Elway is the general manager of the Broncos. The team won in February. \
             The Broncos' quarterback is Peyton Manning.",
        )];
        let c = check("John Elway is the quarterback of the Broncos [1].", "Who is the quarterback?", &s);
        assert_eq!((c.text.as_str(), c.dropped), ("", 1), "{c:?}");
        let c = check("Peyton Manning is the Broncos' quarterback [1].", "Who is the quarterback?", &s);
        assert_eq!(c.text, "Peyton Manning is the Broncos' quarterback [1].");
    }

    #[test]
    fn every_word_a_sentence_adds_to_the_question_comes_from_the_source() {
        let s = [Source::new("Tesla's back was severely wrenched and three of his ribs were broken in the accident.")];
        let q = "What happened to his ribs in the accident?";
        // Four of five content words are there; the one that answers is not.
        let c = check("Tesla's ribs were severely damaged in the accident [1].", q, &s);
        assert_eq!((c.text.as_str(), c.dropped), ("", 1), "{c:?}");
        let c = check("Three of Tesla's ribs were broken in the accident [1].", q, &s);
        assert_eq!(c.text, "Three of Tesla's ribs were broken in the accident [1].");
    }

    fn sources() -> Vec<Source> {
        vec![
            Source::new("The main bearing is greased every 1,800 operating hours with Lumora LX-7 grease."),
            Source::new("The Orion web console listens on port 8443 by default."),
        ]
    }

    #[test]
    fn invented_clauses_and_numbers_are_dropped() {
        let c = check(
            "The Zephyr-9 is designed to operate at 100% efficiency [1]. The main bearing is greased every 1,800 operating hours [1].",
            "How often is the main bearing greased?",
            &sources(),
        );
        assert_eq!(c.text, "The main bearing is greased every 1,800 operating hours [1].");
        assert_eq!((c.cited.clone(), c.dropped, c.informative), (vec![1], 1, true));
    }

    #[test]
    fn unmarked_sentences_get_the_supporting_marker_or_go() {
        let c = check("The console listens on port 8443. It uses port 9999.", "Which port?", &sources());
        assert_eq!(c.text, "The console listens on port 8443 [2].");
        assert_eq!(c.cited, vec![2]);
        // Cited the wrong passage: re-marked with the right one.
        let c = check("The web console listens on port 8443 [1].", "Which port?", &sources());
        assert_eq!(c.text, "The web console listens on port 8443 [2].");
    }

    #[test]
    fn echoes_and_stubs_say_nothing() {
        let c = check(
            "The answer is: How often is the main bearing greased?",
            "How often is the main bearing greased?",
            &sources(),
        );
        assert!(!c.informative, "{c:?}");
        assert_eq!(c.text, "");
    }
}
