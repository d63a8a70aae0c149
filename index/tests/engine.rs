//! The engine keeps both indexes equal to the database: chunks stored while no engine ran are
//! added at open, deleted or unreadable indexes are rebuilt from the database, and a deleted
//! document leaves both. In-memory SQLite, the word-hash test embedder, real HNSW and tantivy.

use kb_index::SearchMode;

use crate::common::{add_document, found, memory_store, open_engine, saved_ids, store_document, stored_ids};

const MODES: [SearchMode; 3] = [SearchMode::Keyword, SearchMode::Vector, SearchMode::Hybrid];
const CRANES: [&str; 2] =
    ["The zanzibarite protocol governs the harbour cranes.", "Crane operators log every zanzibarite inspection twice."];
const OVERTIME: &str = "The quokkanite rule limits overtime in the finance team.";
const COFFEE: &str = "Espresso machines are descaled with calcinex tablets every month.";

#[tokio::test(flavor = "multi_thread")]
async fn chunks_missing_from_the_indexes_are_added_at_open() {
    let root = tempfile::tempdir().unwrap();
    let store = memory_store().await;
    let engine = open_engine(&store, root.path()).await;
    let c = engine.create_collection("docs").await.unwrap();
    add_document(&engine, &c, "cranes.txt", &CRANES).await;
    engine.flush(&c).await.unwrap();
    drop(engine);

    // Stored while no engine ran, as after a crash between the database commit and the indexes.
    store_document(&store, &c, "overtime.txt", &[OVERTIME, COFFEE]).await;
    let (vectors, keywords) = saved_ids(root.path(), &c);
    assert_eq!(vectors.len(), 2, "{vectors:?}");
    assert_eq!(keywords, vectors);

    let engine = open_engine(&store, root.path()).await;
    for mode in MODES {
        assert_eq!(found(&engine, &c, "quokkanite rule", mode).await[0], OVERTIME, "{mode:?}");
        assert_eq!(found(&engine, &c, "calcinex tablets", mode).await[0], COFFEE, "{mode:?}");
        assert!(CRANES.contains(&found(&engine, &c, "zanzibarite", mode).await[0].as_str()), "{mode:?}");
    }
    drop(engine);
    let all = stored_ids(&store, &c).await;
    assert_eq!(all.len(), 4);
    assert_eq!(saved_ids(root.path(), &c), (all.clone(), all));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_or_unreadable_indexes_are_rebuilt_from_the_database() {
    let root = tempfile::tempdir().unwrap();
    let store = memory_store().await;
    let engine = open_engine(&store, root.path()).await;
    let c = engine.create_collection("docs").await.unwrap();
    add_document(&engine, &c, "cranes.txt", &CRANES).await;
    add_document(&engine, &c, "overtime.txt", &[OVERTIME]).await;
    engine.flush(&c).await.unwrap();
    drop(engine);
    let all = stored_ids(&store, &c).await;
    let dir = root.path().join(c.id.to_string());

    // Deleted: both indexes built again at open.
    std::fs::remove_dir_all(&dir).unwrap();
    let engine = open_engine(&store, root.path()).await;
    for mode in MODES {
        assert_eq!(found(&engine, &c, "quokkanite rule", mode).await[0], OVERTIME, "{mode:?}");
        assert_eq!(found(&engine, &c, "zanzibarite crane operators", mode).await[0], CRANES[1], "{mode:?}");
    }
    drop(engine);
    assert_eq!(saved_ids(root.path(), &c), (all.clone(), all.clone()));

    // Unreadable: the same.
    std::fs::write(dir.join("vectors/meta.json"), b"not json").unwrap();
    std::fs::write(dir.join("keywords/meta.json"), b"not json").unwrap();
    let engine = open_engine(&store, root.path()).await;
    for mode in MODES {
        assert_eq!(found(&engine, &c, "quokkanite rule", mode).await[0], OVERTIME, "{mode:?}");
    }
    drop(engine);
    assert_eq!(saved_ids(root.path(), &c), (all.clone(), all));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_document_leaves_both_indexes() {
    let root = tempfile::tempdir().unwrap();
    let store = memory_store().await;
    let engine = open_engine(&store, root.path()).await;
    let c = engine.create_collection("docs").await.unwrap();
    let cranes = add_document(&engine, &c, "cranes.txt", &CRANES).await;
    add_document(&engine, &c, "overtime.txt", &[OVERTIME, COFFEE]).await;
    let before = stored_ids(&store, &c).await;

    engine.delete_document(&c, cranes).await.unwrap();
    for mode in MODES {
        let hits = found(&engine, &c, "zanzibarite crane operators", mode).await;
        assert!(hits.iter().all(|t| !t.contains("zanzibarite")), "{mode:?}: {hits:?}");
        assert_eq!(found(&engine, &c, "quokkanite rule", mode).await[0], OVERTIME, "{mode:?}");
    }
    let left = stored_ids(&store, &c).await;
    assert_eq!(left.len(), 2);
    assert!(left.is_subset(&before));
    engine.flush(&c).await.unwrap();
    drop(engine);
    assert_eq!(saved_ids(root.path(), &c), (left.clone(), left.clone()));

    // And after a restart: nothing comes back.
    let engine = open_engine(&store, root.path()).await;
    for mode in MODES {
        let hits = found(&engine, &c, "zanzibarite", mode).await;
        assert!(hits.iter().all(|t| !t.contains("zanzibarite")), "{mode:?}: {hits:?}");
    }
    drop(engine);
    assert_eq!(saved_ids(root.path(), &c), (left.clone(), left));
}
