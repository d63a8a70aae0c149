//! `kb eval qa`: answers measured on SQuAD v1.1. Each paragraph becomes a document (when the
//! collection is empty); a seeded random sample of questions is asked through the same code
//! the service answers with, and each answer is scored the way the SQuAD README in the shared
//! datasets defines: contains a gold answer string, faithful (every sentence has at least
//! 80% of its content words in the passages it cites), citations retrieved (every citation is
//! among the search hits for the question), refused; with answer lengths and latency.
//! `--unanswerable FILE` also asks questions the corpus does not answer (one a line) and
//! counts the refusals.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kb_index::{Collection, SearchMode, SearchRequest};
use kb_inference::Flow;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::answer::text::{content_words, strip_markers};
use crate::answer::{Answer, AnswerKind, Answerer};
use crate::app::App;
use crate::commands::ingest::open_or_create;
use crate::config::Config;

pub struct QaArgs {
    pub file: PathBuf,
    pub collection: String,
    pub limit: usize,
    pub seed: u64,
    pub top_k: usize,
    pub unanswerable: Option<PathBuf>,
    /// Print every question with its gold answers and the answer.
    pub show: bool,
}

#[derive(Deserialize)]
struct Squad {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    title: String,
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    question: String,
    answers: Vec<Gold>,
}

#[derive(Deserialize)]
struct Gold {
    text: String,
}

struct Question {
    text: String,
    answers: Vec<String>,
}

/// One asked question's outcome.
struct Outcome {
    answer: Answer,
    first: Duration,
    whole: Duration,
    hit_ids: HashSet<i64>,
}

pub async fn run(config: Config, args: QaArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let squad: Squad =
        serde_json::from_str(&text).with_context(|| format!("parsing {} as SQuAD v1.1", args.file.display()))?;
    let (max_tokens, min_relevance) = (config.answer_max_tokens, config.answer_min_relevance);
    let app = App::open(config).await?;
    let c = open_or_create(&app, &args.collection).await?;
    if app.engine.store().documents(c.id).await?.is_empty() {
        ingest(&app, &c, &squad).await?;
    } else {
        println!("collection {} already holds documents: skipping ingest", args.collection);
    }
    let generator = app.load_generator().await?;
    println!("generator: {}", generator.as_ref().map_or("none (extractive)", |g| g.id()));
    let answerer = Answerer::new(app.engine.clone(), generator, max_tokens, min_relevance);

    let mut questions: Vec<Question> = squad
        .data
        .iter()
        .flat_map(|a| &a.paragraphs)
        .flat_map(|p| &p.qas)
        .map(|q| Question { text: q.question.clone(), answers: q.answers.iter().map(|g| g.text.clone()).collect() })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    questions.shuffle(&mut rng);
    questions.truncate(args.limit.max(1));

    let mut report = Report::default();
    for (i, q) in questions.iter().enumerate() {
        let o = ask(&app, &answerer, &c, &q.text, args.top_k).await?;
        let gold = contains_gold(&o.answer.answer, &q.answers);
        if args.show {
            println!(
                "{:>3} {} {:?}\n    gold {:?}\n    {:?} ({:?}, dropped {})",
                i + 1,
                if gold { "+" } else { "-" },
                q.text,
                q.answers,
                o.answer.answer,
                o.answer.kind,
                o.answer.dropped_sentences
            );
        }
        report.add(&o, gold);
    }
    report.print(questions.len());

    if let Some(path) = &args.unanswerable {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let asked: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let mut refused = 0;
        for q in &asked {
            let o = ask(&app, &answerer, &c, q, args.top_k).await?;
            if o.answer.kind == AnswerKind::NotInCorpus {
                refused += 1;
            } else {
                println!("  answered {q:?}: {:?}", o.answer.answer);
            }
        }
        println!("unanswerable: {refused}/{} refused", asked.len());
    }
    Ok(())
}

/// SQuAD's file names: the article title made safe, then the paragraph number.
fn squad_filename(title: &str, p: usize) -> String {
    let mut safe = String::new();
    let mut run = false; // inside a run of other characters, which becomes one `_`
    for c in title.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            safe.push(c);
            run = false;
        } else if !run {
            safe.push('_');
            run = true;
        }
    }
    let safe = safe.trim_matches('_');
    format!("{}-{p:03}.txt", if safe.is_empty() { "article" } else { safe })
}

async fn ingest(app: &App, c: &Collection, squad: &Squad) -> anyhow::Result<()> {
    let started = Instant::now();
    let files: Vec<(String, Vec<u8>)> = squad
        .data
        .iter()
        .flat_map(|a| {
            a.paragraphs
                .iter()
                .enumerate()
                .map(|(p, para)| (squad_filename(&a.title, p), para.context.clone().into_bytes()))
        })
        .collect();
    let n = files.len();
    for part in files.chunks(64) {
        app.ingestor.ingest_files(c, part.to_vec()).await?;
    }
    app.engine.flush(c).await?;
    println!("ingested {n} paragraphs in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn ask(app: &App, answerer: &Answerer, c: &Collection, question: &str, top_k: usize) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let passages = answerer.retrieve(c, question, top_k).await?;
    let mut first: Option<Duration> = None;
    let answer = tokio::task::block_in_place(|| {
        answerer.answer(question, &passages, &mut |_| {
            first.get_or_insert_with(|| started.elapsed());
            Flow::Continue
        })
    })?;
    let whole = started.elapsed();
    // What /search returns for the question by default (each document's best passage): the
    // citations must be among these.
    let req = SearchRequest { query: question.into(), top_k, mode: SearchMode::Hybrid, distinct_documents: true };
    let hit_ids = app.engine.search(c, &req).await?.iter().map(|h| h.chunk.id).collect();
    Ok(Outcome { answer, first: first.unwrap_or(whole), whole, hit_ids })
}

#[derive(Default)]
struct Report {
    gold: usize,
    faithful: usize,
    cited: usize,
    cited_retrieved: usize,
    refused: usize,
    generated: usize,
    extractive: usize,
    dropped: usize,
    words: Vec<usize>,
    first: Vec<Duration>,
    whole: Vec<Duration>,
}

impl Report {
    fn add(&mut self, o: &Outcome, gold: bool) {
        let a = &o.answer;
        self.gold += gold as usize;
        let cited: Vec<&str> = a.citations.iter().map(|c| c.text.as_str()).collect();
        self.faithful += (a.kind == AnswerKind::NotInCorpus || faithful(&a.answer, &cited)) as usize;
        if !a.citations.is_empty() {
            self.cited += 1;
            self.cited_retrieved += a.citations.iter().all(|c| o.hit_ids.contains(&c.chunk_id)) as usize;
        }
        match a.kind {
            AnswerKind::NotInCorpus => self.refused += 1,
            AnswerKind::Generated => self.generated += 1,
            AnswerKind::Extractive => self.extractive += 1,
        }
        self.dropped += a.dropped_sentences;
        self.words.push(strip_markers(&a.answer).split_whitespace().count());
        self.first.push(o.first);
        self.whole.push(o.whole);
    }

    fn print(&mut self, n: usize) {
        let share = |k: usize| k as f64 / n.max(1) as f64;
        self.words.sort_unstable();
        self.first.sort_unstable();
        self.whole.sort_unstable();
        println!(
            "questions: {n}  (generated {}, extractive {}, refused {})",
            self.generated, self.extractive, self.refused
        );
        println!("answer contains gold   {:.3}", share(self.gold));
        println!("faithful               {:.3}", share(self.faithful));
        println!(
            "citations retrieved    {:.3}  ({} of {} answers with citations)",
            self.cited_retrieved as f64 / self.cited.max(1) as f64,
            self.cited_retrieved,
            self.cited
        );
        println!("refused                {:.3}", share(self.refused));
        println!("draft sentences dropped {}", self.dropped);
        println!(
            "answer words           p50 {}  max {}",
            self.words.get(self.words.len() / 2).copied().unwrap_or(0),
            self.words.last().copied().unwrap_or(0)
        );
        let secs = |v: &[Duration], p: f64| percentile(v, p).as_secs_f64();
        println!("first token            p50 {:.2} s  p95 {:.2} s", secs(&self.first, 0.5), secs(&self.first, 0.95));
        println!("whole answer           p50 {:.2} s  p95 {:.2} s", secs(&self.whole, 0.5), secs(&self.whole, 0.95));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Lower-cased, spaces squeezed.
fn loose(s: &str) -> String {
    s.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD v1.1's normalisation: lower case, no punctuation, no articles, spaces squeezed.
fn squad_normalize(s: &str) -> String {
    let s: String = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    s.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// Whether one of `answers` occurs in `text`, loosely or SQuAD-normalised (as whole words).
pub fn contains_gold(text: &str, answers: &[String]) -> bool {
    let lt = loose(text);
    if answers.iter().map(|a| loose(a)).any(|a| !a.is_empty() && lt.contains(&a)) {
        return true;
    }
    let nt = format!(" {} ", squad_normalize(text));
    answers.iter().map(|a| squad_normalize(a)).any(|a| !a.is_empty() && nt.contains(&format!(" {a} ")))
}

/// Whether every sentence of `answer` (markers removed) has at least 80% of its content
/// words in `cited` together.
pub fn faithful(answer: &str, cited: &[&str]) -> bool {
    let bag: HashSet<String> = cited.iter().flat_map(|t| content_words(t)).collect();
    let text = strip_markers(answer);
    let mut sentence = String::new();
    let mut sentences = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        sentence.push(c);
        if matches!(c, '.' | '!' | '?') && chars.peek().is_some_and(|n| n.is_whitespace()) {
            sentences.push(std::mem::take(&mut sentence));
        }
    }
    sentences.push(sentence);
    sentences.iter().all(|s| {
        let words = content_words(s);
        words.is_empty() || words.iter().filter(|w| bag.contains(*w)).count() as f64 >= 0.8 * words.len() as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_is_found_loosely_or_normalised() {
        let gold = vec!["Denver Broncos".to_string()];
        assert!(contains_gold("The  denver broncos won [1].", &gold));
        assert!(contains_gold("It was the U.S. Army.", &["US Army".into()]));
        assert!(!contains_gold("The Broncos won.", &gold));
        assert!(contains_gold("In the 1990s, it grew.", &["1990s".into()]));
    }

    #[test]
    fn faithful_means_every_sentence_is_in_its_citations() {
        let cited = ["The main bearing is greased every 1,800 operating hours."];
        assert!(faithful("The main bearing is greased every 1,800 hours [1].", &cited));
        assert!(!faithful("The bearing is greased every 1,800 hours [1]. It runs at 100% efficiency.", &cited));
    }

    #[test]
    fn file_names_follow_the_squad_harness() {
        assert_eq!(squad_filename("Sky_(United_Kingdom)", 7), "Sky__United_Kingdom-007.txt");
    }
}
