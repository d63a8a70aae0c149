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

/// kb's encoder forward pass computes what candle-transformers' BERT computes, on the real
/// weights, padding included.
#[test]
fn encoder_matches_candle_transformers_bert() {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::{BertModel, Config};
    use kb_inference::embedder::encoder::{Encoder, Precision};

    let dir = model_dir();
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // SAFETY: the file is mapped read-only and not modified while the test runs.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)
            .unwrap()
    };
    let reference = BertModel::load(vb.clone(), &config).unwrap();
    let ours = Encoder::load(vb, &config, Precision::F32).unwrap();
    // Two sequences, the second padded after 5 tokens.
    let ids = Tensor::new(
        &[[101u32, 7592, 2088, 2003, 1037, 3231, 6251, 102], [101, 2129, 2024, 2017, 102, 0, 0, 0]],
        &Device::Cpu,
    )
    .unwrap();
    let types = ids.zeros_like().unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
    let a = reference.forward(&ids, &types, Some(&mask)).unwrap();
    let b = ours.forward(&ids, &types, &mask).unwrap();
    assert_eq!(a.dims(), b.dims());
    // Compare the positions that are not padding.
    for (row, len) in [(0usize, 8usize), (1, 5)] {
        let x = a.get(row).unwrap().narrow(0, 0, len).unwrap();
        let y = b.get(row).unwrap().narrow(0, 0, len).unwrap();
        let diff: f32 = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff < 1e-4, "row {row}: max |difference| {diff}");
    }
}

/// int8 linear layers keep each vector within a small angle of f32's, and the ranking of
/// paraphrase over unrelated text.
#[test]
fn int8_embeddings_stay_close_to_f32() {
    use kb_inference::embedder::encoder::Precision;
    let f32s = BertEmbedder::load(&model_dir()).unwrap();
    let int8 = BertEmbedder::load_with(&model_dir(), Precision::Int8).unwrap();
    let texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly revenue grew by twelve percent in Europe.",
        "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
        "Patients with elevated IL-6 markers showed a significantly reduced response to the standard treatment \
         regimen, and the effect persisted after adjustment for age, sex and baseline disease severity.",
    ];
    let a = f32s.embed_passages(&texts).unwrap();
    let b = int8.embed_passages(&texts).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(dot(x, y) > 0.99, "cosine int8 vs f32 {}", dot(x, y));
        assert!((dot(y, y) - 1.0).abs() < 1e-4);
    }
    assert!(dot(&b[0], &b[1]) > dot(&b[0], &b[2]) + 0.3);
}
