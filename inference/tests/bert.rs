//! The default sentence encoder against the real all-MiniLM-L6-v2 weights.

use std::path::PathBuf;

use kb_inference::{BertEmbedder, Embedder};

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run scripts/fetch-models.sh first");
    dir
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn embeds_normalised_vectors_that_rank_paraphrases_first() {
    let e = BertEmbedder::load(&model_dir()).unwrap();
    assert_eq!(e.dim(), 384);
    assert_eq!(e.max_tokens(), 256);
    let texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly revenue grew by twelve percent in Europe.",
    ];
    let v = e.embed_passages(&texts).unwrap();
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 384);
        assert!((dot(x, x) - 1.0).abs() < 1e-4);
    }
    assert!(dot(&v[0], &v[1]) > 0.5, "paraphrase similarity {}", dot(&v[0], &v[1]));
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.3);
    // Padding in a mixed-length batch must not change a vector.
    let alone = e.embed_query(texts[2]).unwrap();
    assert!(dot(&alone, &v[2]) > 0.9999);
}

#[test]
fn missing_model_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = BertEmbedder::load(dir.path()).err().expect("must fail");
    assert!(err.to_string().contains("config.json"), "{err}");
}
