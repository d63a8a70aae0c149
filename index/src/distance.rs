//! The vector index's distance: one minus the dot product of unit vectors, which is the
//! cosine distance once every vector is normalised (the index does that on the way in).
//! hnsw_rs's own cosine recomputes both norms in a serial f64 loop for every pair, which made
//! it most of a search's time; this is one dot product, vectorised.

use hnsw_rs::anndists::dist::Distance;

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

/// The dot product, on AVX2 + FMA where the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// Sixteen running sums, so that the compiler may reorder the reduction into vector lanes.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
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
