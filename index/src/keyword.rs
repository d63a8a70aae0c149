//! The BM25 keyword index of one collection (tantivy), persisted under its directory.
//!
//! One analysed field holds the document title, the heading path and the chunk text: the
//! title travels with every chunk, and a single field keeps BM25's length normalisation
//! over what a reader sees as the passage.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::store::ChunkText;
use crate::tokenizer::{analyzer, ANALYZER};
use crate::{IndexError, Result};

const WRITER_HEAP: usize = 64 * 1024 * 1024;

/// A collection's BM25 index over chunk text with its title and headings.
pub struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    analyzer: TextAnalyzer,
    chunk_id: Field,
    content: Field,
}

fn schema() -> (Schema, Field, Field) {
    let mut b = Schema::builder();
    let chunk_id = b.add_i64_field("chunk_id", NumericOptions::default().set_indexed().set_fast().set_stored());
    let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs);
    let content = b.add_text_field("content", TextOptions::default().set_indexing_options(indexing));
    (b.build(), chunk_id, content)
}

impl KeywordIndex {
    /// Opens the index in `dir`, creating it when absent. An error if it exists but cannot be
    /// opened, or was built with another schema or analyzer (the caller rebuilds it from the
    /// database).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io { path: dir.to_owned(), source })?;
        let (schema, chunk_id, content) = schema();
        let index = if dir.join("meta.json").exists() {
            let index = Index::open_in_dir(dir)?;
            // The schema names the analyzer: terms from another one would not match queries.
            if index.schema() != schema {
                return Err(tantivy::TantivyError::SchemaError(format!(
                    "built with another schema or analyzer (this kb uses {ANALYZER:?})"
                ))
                .into());
            }
            index
        } else {
            Index::create_in_dir(dir, schema)?
        };
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        // One indexing thread: ingest batches are small and the cores are busy embedding.
        let writer = index.writer_with_num_threads(1, WRITER_HEAP)?;
        Ok(Self { index, reader, writer: Mutex::new(writer), analyzer: analyzer(), chunk_id, content })
    }

    /// Adds chunks and commits. The caller makes sure ids are not already present.
    pub fn insert(&self, chunks: &[ChunkText]) -> Result<()> {
        let mut writer = self.writer.lock().map_err(|_| IndexError::Task("keyword writer poisoned".into()))?;
        for c in chunks {
            writer.add_document(doc!(self.chunk_id => c.id, self.content => crate::contextual_text(c.title.as_deref(), &c.heading_path, &c.text)))?;
        }
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Removes these chunks and commits.
    pub fn remove(&self, ids: &[i64]) -> Result<()> {
        let mut writer = self.writer.lock().map_err(|_| IndexError::Task("keyword writer poisoned".into()))?;
        for id in ids {
            writer.delete_term(Term::from_field_i64(self.chunk_id, *id));
        }
        writer.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Every chunk id the index holds: what it has applied.
    pub fn ids(&self) -> Result<HashSet<i64>> {
        let searcher = self.reader.searcher();
        let mut ids = HashSet::new();
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().i64("chunk_id")?;
            for doc in segment.doc_ids_alive() {
                if let Some(id) = column.first(doc) {
                    ids.insert(id);
                }
            }
        }
        Ok(ids)
    }

    /// Analysed terms of `text`, as the index sees them.
    fn terms(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    /// BM25 search: (chunk id, score), best first. The query is analysed into terms, never
    /// parsed as query syntax, so any user text is a valid query.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(i64, f32)>> {
        let clauses: Vec<(Occur, Box<dyn Query>)> = self
            .terms(query)
            .into_iter()
            .map(|t| {
                let q = TermQuery::new(Term::from_field_text(self.content, &t), IndexRecordOption::WithFreqs);
                (Occur::Should, Box::new(q) as Box<dyn Query>)
            })
            .collect();
        if clauses.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(k))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let column = searcher.segment_reader(addr.segment_ord).fast_fields().i64("chunk_id")?;
            match column.first(addr.doc_id) {
                Some(id) => out.push((id, score)),
                None => {
                    let d: TantivyDocument = searcher.doc(addr)?;
                    if let Some(id) = d.get_first(self.chunk_id).and_then(|v| v.as_i64()) {
                        out.push((id, score));
                    }
                }
            }
        }
        Ok(out)
    }

    /// For each of `texts`, the share of what `query` is about that it holds: the BM25 IDF of
    /// the query terms it contains over that of all the query's terms. A term the collection
    /// never uses weighs the most, so a question about something the collection does not
    /// mention scores low against every passage, however close its other words come.
    pub fn term_coverage(&self, query: &str, texts: &[&str]) -> Result<Vec<f32>> {
        let mut terms = self.terms(query);
        terms.sort();
        terms.dedup();
        if terms.is_empty() {
            return Ok(vec![0.0; texts.len()]);
        }
        let searcher = self.reader.searcher();
        let n = searcher.num_docs() as f32;
        let mut weights = Vec::with_capacity(terms.len());
        for t in &terms {
            let df = searcher.doc_freq(&Term::from_field_text(self.content, t))? as f32;
            weights.push((1.0 + (n - df + 0.5) / (df + 0.5)).ln());
        }
        let total: f32 = weights.iter().sum::<f32>().max(f32::EPSILON);
        Ok(texts
            .iter()
            .map(|text| {
                let held: HashSet<String> = self.terms(text).into_iter().collect();
                terms.iter().zip(&weights).filter(|(t, _)| held.contains(*t)).map(|(_, w)| w).sum::<f32>() / total
            })
            .collect())
    }

    /// Chunks the index holds.
    pub fn num_chunks(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The tantivy index itself.
    pub fn index(&self) -> &Index {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: i64, text: &str) -> ChunkText {
        ChunkText { id, document_id: 1, title: None, heading_path: Vec::new(), text: text.into() }
    }

    #[test]
    fn reopens_its_own_index_and_matches_across_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let ix = KeywordIndex::open(dir.path()).unwrap();
        ix.insert(&[chunk(1, "Serum IL-6 rises in sepsis."), chunk(2, "TNFα blockade")]).unwrap();
        drop(ix);
        let ix = KeywordIndex::open(dir.path()).unwrap();
        assert_eq!(ix.num_chunks(), 2);
        assert_eq!(ix.search("il6", 10).unwrap()[0].0, 1);
        assert_eq!(ix.search("TNF-alpha", 10).unwrap()[0].0, 2);
    }

    #[test]
    fn term_coverage_weighs_what_the_collection_never_mentions() {
        let dir = tempfile::tempdir().unwrap();
        let ix = KeywordIndex::open(dir.path()).unwrap();
        let library = "紫藤图书馆的古籍修复室每周三下午两点对外开放。";
        ix.insert(&[
            chunk(1, "Tesla moved to New York in 1884 and worked for Edison."),
            chunk(2, "The main bearing is greased every 1,800 operating hours."),
            chunk(3, library),
        ])
        .unwrap();
        let passages = ["Tesla moved to New York in 1884 and worked for Edison.", library];
        let cov = |q: &str| ix.term_coverage(q, &passages).unwrap();
        // Everything asked is in the first passage.
        assert!(cov("When did Tesla move to New York?")[0] > 0.9);
        // A name the collection never mentions outweighs the words it shares.
        assert!(cov("What was Tesla's favourite colour?")[0] < 0.35);
        // Either Chinese script reads the same terms.
        assert!(cov("紫藤圖書館的古籍修復室什麼時候對外開放？")[1] > 0.35);
        assert!(cov("火星上第一座城市的市长叫什么名字？")[1] < 0.35);
        assert_eq!(cov("?"), vec![0.0, 0.0]);
    }

    #[test]
    fn an_index_from_an_older_analyzer_is_refused_then_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        // What kb built before the word-delimiter analyzer: same fields, analyzer "kb_en".
        let mut b = Schema::builder();
        b.add_i64_field("chunk_id", NumericOptions::default().set_indexed().set_fast().set_stored());
        let indexing =
            TextFieldIndexing::default().set_tokenizer("kb_en").set_index_option(IndexRecordOption::WithFreqs);
        b.add_text_field("content", TextOptions::default().set_indexing_options(indexing));
        drop(Index::create_in_dir(dir.path(), b.build()).unwrap());

        assert!(KeywordIndex::open(dir.path()).is_err());
        // The engine's fallback: delete the directory, open afresh, refill from the database.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let ix = KeywordIndex::open(dir.path()).unwrap();
        ix.insert(&[chunk(7, "Bcl-2 family")]).unwrap();
        assert_eq!(ix.search("bcl2", 10).unwrap()[0].0, 7);
    }
}
