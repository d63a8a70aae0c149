//! Evidence: the sentences of the retrieved passages that bear on the question. Each sentence
//! is scored by its embedding similarity to the question (weighed by how well the embedder
//! reads the question, as hybrid search weighs its vector side), the share of the question's
//! (IDF-weighted) words it holds, and whether it holds the kind of thing the question asks
//! for (a number for "how many", a name for "who"); the best few, with the sentence before
//! one that opens with a pronoun, are what the generator sees.

use std::collections::{HashMap, HashSet};

use kb_index::{is_cjk, Hit};
use kb_inference::{Embedder, ModelError};

use super::text::{content_words, sentences, stem, words};

/// Sentences the generator is shown at most (their neighbours come on top).
const SHOWN: usize = 3;
/// Passages whose sentences are ranked: the best hits; later ones rarely hold the answer and
/// every sentence costs an embedding.
pub const PASSAGES: usize = 5;

#[derive(Debug, Clone)]
pub struct Sentence {
    /// Index into the retrieved passages.
    pub passage: usize,
    /// Position in the passage.
    pub index: usize,
    pub text: String,
    pub score: f32,
}

/// The evidence for one question: numbered groups of sentences, one group per passage.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// Group `n` (1-based, the `[n]` the generator cites) holds sentences of passage
    /// `passages[n - 1]` (an index into the retrieved hits).
    pub passages: Vec<usize>,
    pub groups: Vec<Vec<String>>,
    /// Every ranked sentence, best first.
    pub ranked: Vec<Sentence>,
    /// What ranked them, to score a generated sentence the same way.
    pub ranker: Ranker,
}

impl Evidence {
    /// The group number (`[n]`) of a retrieved passage, when it is part of the evidence.
    pub fn number_of(&self, passage: usize) -> Option<usize> {
        self.passages.iter().position(|&p| p == passage).map(|i| i + 1)
    }
}

/// What a question asks for, from its wh-words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Wants {
    Number,
    Name,
    #[default]
    Anything,
}

fn wants(question: &str) -> Wants {
    let q = words(question).join(" ");
    let has = |p: &str| q.starts_with(p) || q.contains(&format!(" {p}"));
    let number = ["how many", "how much", "how long", "how old", "how far", "how often", "how large", "how big"];
    let when = ["when", "what year", "which year", "what century", "what decade", "what date", "what percentage"];
    // Chinese asks "how many / when" and "who / where" with these, wherever they stand.
    let cjk_number =
        ["多少", "几", "幾", "多久", "多长", "多長", "多远", "多遠", "什么时候", "什麼時候", "何时", "何時", "哪年"];
    let cjk_name = ["谁", "誰", "哪里", "哪裡", "哪儿", "哪兒"];
    if number.iter().chain(when.iter()).any(|p| has(p)) || cjk_number.iter().any(|p| question.contains(p)) {
        Wants::Number
    } else if ["who", "whom", "whose", "where"].iter().any(|p| has(p)) || cjk_name.iter().any(|p| question.contains(p))
    {
        Wants::Name
    } else {
        Wants::Anything
    }
}

const NUMBER_WORDS: &[&str] = &[
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "twenty",
    "hundred",
    "thousand",
    "million",
    "billion",
    "half",
    "dozen",
    "century",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "annually",
    "nightly",
];

/// Whether `sentence` holds what the question wants and does not already say.
fn holds(wants: Wants, sentence: &str, question_words: &HashSet<String>) -> bool {
    match wants {
        Wants::Anything => false,
        Wants::Number => {
            words(sentence).iter().any(|w| w.chars().any(|c| c.is_ascii_digit()) || NUMBER_WORDS.contains(&w.as_str()))
                || sentence.chars().any(|c| "零〇一二两兩三四五六七八九十百千万萬".contains(c))
        }
        Wants::Name => {
            sentence.split_whitespace().skip(1).map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).any(|w| {
                w.chars().next().is_some_and(char::is_uppercase) && !question_words.contains(&w.to_lowercase())
            })
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Whether a sentence leans on the one before it ("It was built in 1911.", "它建于1911年。").
fn leans_back(sentence: &str) -> bool {
    if sentence.starts_with(['它', '他', '她', '其', '该', '該', '此']) {
        return true;
    }
    let first = sentence.split_whitespace().next().unwrap_or("").to_lowercase();
    let first = first.trim_matches(|c: char| !c.is_alphanumeric());
    ["it", "its", "he", "she", "his", "her", "they", "their", "them", "this", "these", "those", "there", "such"]
        .contains(&first)
}

/// Scores sentences for one question: its embedding, its (IDF-weighted) word stems, what it
/// asks for.
#[derive(Debug, Clone, Default)]
pub struct Ranker {
    question: Vec<f32>,
    question_words: HashSet<String>,
    question_stems: Vec<String>,
    idf: HashMap<String, f32>,
    /// The sum of the question stems' IDF: a sentence holding them all has overlap 1.
    total: f32,
    wants: Wants,
    /// How far the embedding similarity counts, 0 to 1: the embedder's reading of the
    /// question ([`kb_index::fusion::vector_trust`]).
    trust: f32,
}

impl Ranker {
    fn overlap(&self, stems: &HashSet<String>) -> f32 {
        let idf = |s: &str| self.idf.get(s).copied().unwrap_or(IDF_UNSEEN);
        self.question_stems.iter().filter(|w| stems.contains(*w)).map(|w| idf(w)).sum::<f32>() / self.total
    }

    /// How well `text` (embedded as `vector`) answers the question, from the passage ranked
    /// `passage` (0 = best).
    pub fn score(&self, text: &str, vector: &[f32], passage: usize) -> f32 {
        let stems = stems(text);
        let novel = stems.iter().any(|w| !self.question_stems.contains(w));
        // A CJK run counts a word per two characters.
        let short = text.split_whitespace().count() + text.chars().filter(|&c| is_cjk(c)).count() / 2 < 4;
        self.trust * dot(&self.question, vector)
            + 0.6 * self.overlap(&stems)
            + if holds(self.wants, text, &self.question_words) { 0.15 } else { 0.0 }
            - if novel { 0.0 } else { 0.3 }
            - if short { 0.2 } else { 0.0 }
            - 0.02 * passage as f32
    }
}

/// The IDF of a stem no candidate sentence holds.
const IDF_UNSEEN: f32 = 0.1;
/// Sentences embedded at most: the rest, sharing fewer words with the question, are ranked by
/// their words alone (an embedding costs CPU time before the first token).
const EMBEDDED: usize = 16;

fn stems(text: &str) -> HashSet<String> {
    content_words(text).iter().map(|w| stem(w).to_owned()).collect()
}

/// Ranks the sentences of `hits` for `question`, which the embedder reads with `trust` (0 to
/// 1: how far its similarity counts). `None` when no sentence shares a word with the
/// question: then nothing retrieved bears on it.
pub fn select(
    question: &str,
    hits: &[Hit],
    embedder: &dyn Embedder,
    trust: f32,
) -> Result<Option<Evidence>, ModelError> {
    let mut candidates: Vec<Sentence> = Vec::new();
    for (p, h) in hits.iter().take(PASSAGES).enumerate() {
        for (index, text) in sentences(&h.chunk.text).into_iter().enumerate() {
            candidates.push(Sentence { passage: p, index, text, score: 0.0 });
        }
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let question_stems: Vec<String> = {
        let mut seen = HashSet::new();
        content_words(question).iter().map(|w| stem(w).to_owned()).filter(|s| seen.insert(s.clone())).collect()
    };
    let sentence_stems: Vec<HashSet<String>> = candidates.iter().map(|s| stems(&s.text)).collect();
    // Rarer words say more about which sentence is meant.
    let n = candidates.len() as f32;
    let mut df: HashMap<String, f32> = HashMap::new();
    for stems in &sentence_stems {
        for s in stems {
            *df.entry(s.clone()).or_default() += 1.0;
        }
    }
    let idf: HashMap<String, f32> =
        df.into_iter().map(|(s, d)| (s, ((n + 1.0) / (d + 0.5)).ln().max(IDF_UNSEEN))).collect();
    let total = question_stems.iter().map(|s| idf.get(s).copied().unwrap_or(IDF_UNSEEN)).sum::<f32>().max(1e-6);
    let mut ranker = Ranker {
        question: Vec::new(),
        question_words: words(question).into_iter().collect(),
        question_stems,
        idf,
        total,
        wants: wants(question),
        trust,
    };
    let overlaps: Vec<f32> = sentence_stems.iter().map(|s| ranker.overlap(s)).collect();
    if overlaps.iter().all(|&o| o == 0.0) {
        return Ok(None);
    }
    // Only the sentences sharing most with the question are embedded.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| overlaps[b].total_cmp(&overlaps[a]).then(a.cmp(&b)));
    order.truncate(EMBEDDED);
    ranker.question = embedder.embed_query(question)?;
    let texts: Vec<&str> = order.iter().map(|&i| candidates[i].text.as_str()).collect();
    let vectors = embedder.embed_passages(&texts)?;
    let zero = vec![0.0; ranker.question.len()];
    for (i, s) in candidates.iter_mut().enumerate() {
        let v = order.iter().position(|&o| o == i).map_or(zero.as_slice(), |k| vectors[k].as_slice());
        s.score = ranker.score(&s.text, v, s.passage);
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));

    let mut passages: Vec<usize> = Vec::new();
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (passage, sentence index)
    for s in candidates.iter().take(SHOWN) {
        if !passages.contains(&s.passage) {
            passages.push(s.passage);
        }
        if leans_back(&s.text) && s.index > 0 {
            chosen.push((s.passage, s.index - 1));
        }
        chosen.push((s.passage, s.index));
    }
    let groups = passages
        .iter()
        .map(|&p| {
            let mut picked: Vec<&Sentence> =
                candidates.iter().filter(|s| s.passage == p && chosen.contains(&(p, s.index))).collect();
            picked.sort_by_key(|s| s.index);
            picked.iter().map(|s| s.text.clone()).collect()
        })
        .collect();
    Ok(Some(Evidence { passages, groups, ranked: candidates, ranker }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_say_what_they_want() {
        assert_eq!(wants("How often is the main bearing greased?"), Wants::Number);
        assert_eq!(wants("In what year did Tesla die?"), Wants::Number);
        assert_eq!(wants("Who founded the company?"), Wants::Name);
        assert_eq!(wants("What grease is used?"), Wants::Anything);
        let q: HashSet<String> = words("Who designed the Orion console?").into_iter().collect();
        assert!(holds(Wants::Name, "It was designed by Priya Raman.", &q));
        assert!(!holds(Wants::Name, "The Orion console was designed in house.", &q));
    }

    #[test]
    fn pronouns_lean_back() {
        assert!(leans_back("It was built in 1911."));
        assert!(!leans_back("Tesla was born in 1856."));
        assert!(leans_back("它建于1911年。"));
        assert!(!leans_back("特斯拉生于1856年。"));
    }

    #[test]
    fn chinese_questions_say_what_they_want() {
        assert_eq!(wants("叶轮每运行多少小时保养一次？"), Wants::Number);
        assert_eq!(wants("古籍修復室什麼時候開放？"), Wants::Number);
        assert_eq!(wants("谁负责数据迁移？"), Wants::Name);
        assert!(holds(Wants::Number, "每周三下午两点开放。", &HashSet::new()));
    }
}
