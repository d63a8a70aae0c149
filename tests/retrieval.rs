//! The retrieval core end to end: the fixtures ingested through the real parsers, embedder,
//! database and indexes, then searched in all three modes — on SQLite and on PostgreSQL.

use crate::common::{database_url, open, read_fixture, Db, Kb};
use kb_index::{Collection, Hit, SearchMode, SearchRequest};
use kb_ingest::pipeline::Outcome;

const GOOD: [&str; 4] = ["handbook.pdf", "guide.md", "page.html", "notes.txt"];
const BAD: [&str; 3] = ["truncated.pdf", "binary.pdf", "panic.pdf"];

/// Known sentences and where they must be found.
const KNOWN: [(&str, &str, Option<u32>); 5] = [
    ("What torque do the blade bolts of the Zephyr-9 need?", "handbook.pdf", Some(2)),
    ("How often is the main bearing greased with Lumora LX-7?", "handbook.pdf", Some(3)),
    ("How much RAM does the Orion scheduler need on each worker node?", "guide.md", None),
    ("How often is the espresso machine descaled with Calcinex tablets?", "page.html", None),
    ("What is the budget cap of Project Halcyon?", "notes.txt", None),
];

async fn search(kb: &Kb, c: &Collection, q: &str, mode: SearchMode) -> Vec<Hit> {
    let req = SearchRequest { query: q.into(), top_k: 5, mode, distinct_documents: false };
    kb.engine.search(c, &req).await.expect("search")
}

async fn ingest_fixtures(kb: &Kb) -> (Collection, Vec<Outcome>) {
    let c = kb.engine.create_collection("fixtures").await.expect("create");
    let files = GOOD.iter().chain(BAD.iter()).map(|n| read_fixture(n)).collect();
    let outcomes = kb.ingestor.ingest_files(&c, files).await.expect("ingest");
    kb.engine.flush(&c).await.unwrap();
    (c, outcomes)
}

async fn ingest_and_search(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path()).await;
    let kb = open(&url, &dir.path().join("indexes")).await;
    let (c, outcomes) = ingest_fixtures(&kb).await;

    // Good files indexed, bad ones failed with a message, each on its own.
    for (name, outcome) in GOOD.iter().chain(BAD.iter()).zip(&outcomes) {
        match (GOOD.contains(name), outcome) {
            (true, Outcome::Indexed { chunks, .. }) => assert!(*chunks > 0, "{name}"),
            (false, Outcome::Failed { error, .. }) => assert!(!error.to_string().is_empty(), "{name}"),
            (_, other) => panic!("{name}: unexpected outcome {other:?}"),
        }
    }
    let docs = kb.engine.store().documents(c.id).await.unwrap();
    for d in &docs {
        let bad = BAD.contains(&d.filename.as_str());
        assert_eq!(d.status.as_str(), if bad { "failed" } else { "done" }, "{}", d.filename);
        assert_eq!(d.error.is_some(), bad, "{}: {:?}", d.filename, d.error);
    }

    for (q, file, page) in KNOWN {
        for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
            let hits = search(&kb, &c, q, mode).await;
            let top = hits.first().unwrap_or_else(|| panic!("{mode:?}: no hits for {q}"));
            assert_eq!(top.chunk.filename, file, "{mode:?} {q}: top hit {:?}", top.chunk.text);
            assert_eq!(top.chunk.page, page, "{mode:?} {q}: page");
        }
    }

    // Headings kept, boilerplate dropped.
    let ram = &search(&kb, &c, "12 GiB of RAM on each worker node", SearchMode::Keyword).await[0];
    assert!(ram.chunk.heading_path.iter().any(|h| h == "System requirements"), "{:?}", ram.chunk.heading_path);
    for canary in ["SCRIPT-CANARY", "NAV-CANARY", "FOOTER-CANARY", "STYLE-CANARY"] {
        let hits = search(&kb, &c, canary, SearchMode::Keyword).await;
        assert!(hits.iter().all(|h| !h.chunk.text.contains(canary)), "{canary} leaked into the index");
    }

    // The same bytes again are recognised, not indexed twice.
    let again = kb.ingestor.ingest_files(&c, vec![read_fixture("notes.txt")]).await.unwrap();
    assert!(matches!(again[0], Outcome::Unchanged { .. }), "{again:?}");

    // A changed file with the same name replaces the old version.
    let new_notes =
        b"Project Halcyon steering meeting notes\n\nThe budget of Project Halcyon is now capped at 999,000 euros.\n"
            .to_vec();
    let replaced = kb.ingestor.ingest_files(&c, vec![("notes.txt".into(), new_notes)]).await.unwrap();
    assert!(matches!(replaced[0], Outcome::Indexed { .. }), "{replaced:?}");
    let named: Vec<_> =
        kb.engine.store().documents(c.id).await.unwrap().into_iter().filter(|d| d.filename == "notes.txt").collect();
    assert_eq!(named.len(), 1);
    for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = search(&kb, &c, "Project Halcyon budget", mode).await;
        assert!(hits.iter().filter(|h| h.chunk.filename == "notes.txt").all(|h| !h.chunk.text.contains("380,000")));
        assert!(hits.iter().any(|h| h.chunk.text.contains("999,000")), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_and_search_on_sqlite() {
    ingest_and_search(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_and_search_on_postgres() {
    ingest_and_search(Db::Postgres).await;
}

fn summary(hits: &[Hit]) -> Vec<(i64, String)> {
    hits.iter().map(|h| (h.chunk.id, format!("{:.4}", h.score))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn indexes_are_rebuilt_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(Db::Sqlite, dir.path()).await;
    let index_dir = dir.path().join("indexes");
    let kb = open(&url, &index_dir).await;
    let (c, _) = ingest_fixtures(&kb).await;
    let mut before = Vec::new();
    for (q, _, _) in KNOWN {
        for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
            before.push(summary(&search(&kb, &c, q, mode).await));
        }
    }
    kb.engine.store().close().await;
    drop(kb);

    std::fs::remove_dir_all(&index_dir).unwrap();
    let kb = open(&url, &index_dir).await;
    assert!(index_dir.join(c.id.to_string()).join("keywords").is_dir(), "keyword index rebuilt on disk");
    assert!(index_dir.join(c.id.to_string()).join("vectors").is_dir(), "vector index rebuilt on disk");
    let mut after = Vec::new();
    for (q, _, _) in KNOWN {
        for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
            after.push(summary(&search(&kb, &c, q, mode).await));
        }
    }
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_document_leaves_all_three_modes() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(Db::Sqlite, dir.path()).await;
    let kb = open(&url, &dir.path().join("indexes")).await;
    let (c, _) = ingest_fixtures(&kb).await;
    let q = "What torque do the blade bolts of the Zephyr-9 need?";
    let handbook = search(&kb, &c, q, SearchMode::Hybrid).await[0].chunk.document_id;
    kb.engine.delete_document(&c, handbook).await.unwrap();
    for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = search(&kb, &c, q, mode).await;
        assert!(hits.iter().all(|h| h.chunk.document_id != handbook), "{mode:?} still finds the deleted document");
    }
    // Also after a restart, from what the indexes saved.
    drop(kb);
    let kb = open(&url, &dir.path().join("indexes")).await;
    for mode in [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = search(&kb, &c, q, mode).await;
        assert!(hits.iter().all(|h| h.chunk.document_id != handbook), "{mode:?} after restart");
    }
}

/// Feedback on answers round-trips through both databases, oldest first, per collection.
async fn feedback_round_trip(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let store = kb_index::Store::open(&crate::common::database_url(db, dir.path()).await).await.unwrap();
    use kb_index::store::{NewFeedback, Rating};
    let cites = serde_json::json!([{"n": 1, "filename": "handbook.pdf", "page": 3}]);
    let first = NewFeedback {
        collection: "docs",
        rating: Rating::Up,
        comment: None,
        question: "How often is the main bearing greased?",
        answer: "Every 1,800 operating hours [1].",
        citations: &cites,
    };
    let a = store.add_feedback(&first).await.unwrap();
    let b = store
        .add_feedback(&NewFeedback {
            collection: "other",
            rating: Rating::Down,
            comment: Some("wrong"),
            ..first.clone()
        })
        .await
        .unwrap();
    assert!(b > a);
    let all = store.feedback(None).await.unwrap();
    assert_eq!(all.iter().map(|f| f.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!((all[0].rating, all[0].comment.as_deref(), &all[0].citations), (Rating::Up, None, &cites));
    let other = store.feedback(Some("other")).await.unwrap();
    assert_eq!((other.len(), other[0].comment.as_deref()), (1, Some("wrong")));
}

#[tokio::test]
async fn feedback_is_stored_in_sqlite() {
    feedback_round_trip(Db::Sqlite).await;
}

#[tokio::test]
async fn feedback_is_stored_in_postgres() {
    feedback_round_trip(Db::Postgres).await;
}
