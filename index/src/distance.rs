//! The vector index's distance: one minus the dot product of unit vectors, which is the
//! cosine distance once every vector is normalised (the index does that on the way in).
//! hnsw_rs's own cosine recomputes both norms in a serial f64 loop for every pair, which made
//! it most of a search's time; this is one dot product, vectorised.

use hnsw_rs::anndists::dist::Distance;
use kb_inference::embedder::dot;

/// Cosine distance of unit vectors: `1 − a·b`, at least 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// `v` scaled to unit length (left as it is when zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_cosine_is_the_cosine_distance() {
        let a = normalized(&(0..384).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>());
        let b = normalized(&(0..384).map(|i| (i as f32 * 0.11).cos()).collect::<Vec<_>>());
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((UnitCosine.eval(&a, &b) - (1.0 - naive)).abs() < 1e-5);
        assert!(UnitCosine.eval(&a, &a) < 1e-5);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
