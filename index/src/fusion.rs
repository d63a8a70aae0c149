//! Fusing a keyword ranking and a vector ranking into one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How hybrid search combines its two rankings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Fusion {
    /// Reciprocal-rank fusion: `sum 1 / (k + rank)`. Ignores scores entirely.
    Rrf {
        /// The rank constant: larger flattens the difference between ranks.
        k: f32,
    },
    /// Convex combination of scores normalised per query: BM25 divided by the query's best
    /// BM25 score, cosine similarity mapped from [-1, 1] to [0, 1] scaled by the best.
    /// `alpha` weighs the vector side. Uses how much better the best hit is, which RRF throws away.
    Convex {
        /// The vector side's weight, 0 to 1; the keyword side gets 1 - alpha.
        alpha: f32,
    },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Convex { alpha: 0.5 }
    }
}

/// Fuses `keyword` (BM25 scores) and `vector` (cosine similarities) lists, best first.
pub fn fuse(fusion: Fusion, keyword: &[(i64, f32)], vector: &[(i64, f32)]) -> Vec<(i64, f32)> {
    fuse_weighted(fusion, 1.0, keyword, vector)
}

/// How far hybrid search trusts the vector side for a query the embedder reads with
/// `coverage` ([`kb_inference::Embedder::coverage`]): fully from three quarters of the query
/// read in real word pieces, not at all below a quarter, linearly between; the middle is where
/// most of the query stops being readable. An embedder that reads a query one character at a
/// time, or not at all, places its vector by noise, and fusing that noise in can only push
/// the keyword side's good hits down.
pub fn vector_trust(coverage: f32) -> f32 {
    ((coverage - 0.25) / 0.5).clamp(0.0, 1.0)
}

/// [`fuse`] for a query the embedder reads with `coverage`: the vector side weighs in by
/// [`vector_trust`], so with no trust hybrid ranks as keyword search does.
pub fn fuse_for_coverage(
    fusion: Fusion,
    coverage: f32,
    keyword: &[(i64, f32)],
    vector: &[(i64, f32)],
) -> Vec<(i64, f32)> {
    fuse_weighted(fusion, vector_trust(coverage), keyword, vector)
}

fn fuse_weighted(fusion: Fusion, trust: f32, keyword: &[(i64, f32)], vector: &[(i64, f32)]) -> Vec<(i64, f32)> {
    let mut scores: HashMap<i64, f32> = HashMap::with_capacity(keyword.len() + vector.len());
    match fusion {
        Fusion::Rrf { k } => {
            for (list, weight) in [(keyword, 1.0), (vector, trust)] {
                for (rank, (id, _)) in list.iter().enumerate() {
                    *scores.entry(*id).or_default() += weight / (k + rank as f32 + 1.0);
                }
            }
        }
        Fusion::Convex { alpha } => {
            let alpha = alpha * trust;
            let max_kw = keyword.first().map_or(1.0, |(_, s)| s.max(f32::EPSILON));
            for (id, s) in keyword {
                *scores.entry(*id).or_default() += (1.0 - alpha) * s / max_kw;
            }
            // Min-max within the candidate list: cosine scores bunch together, and the spread
            // among the candidates is what carries information.
            let (lo, hi) = vector.iter().fold((f32::MAX, f32::MIN), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)));
            let span = (hi - lo).max(f32::EPSILON);
            for (id, s) in vector {
                *scores.entry(*id).or_default() += alpha * (s - lo) / span;
            }
        }
    }
    let mut out: Vec<(i64, f32)> = scores.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_prefers_items_ranked_well_by_both() {
        // 2 is second and first; 1 is first and third: 1/62 + 1/61 beats 1/61 + 1/63.
        let kw = [(1, 9.0), (2, 8.0), (3, 1.0)];
        let vec = [(2, 0.9), (4, 0.8), (1, 0.7)];
        let fused = fuse(Fusion::Rrf { k: 60.0 }, &kw, &vec);
        assert_eq!(fused[0].0, 2);
        assert_eq!(fused[1].0, 1);
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn convex_keeps_a_dominant_keyword_hit_first() {
        let kw = [(1, 30.0), (2, 5.0)];
        let vec = [(2, 0.61), (1, 0.60), (3, 0.2)];
        let fused = fuse(Fusion::Convex { alpha: 0.5 }, &kw, &vec);
        assert_eq!(fused[0].0, 1);
        // With the vector side alone, 2 would win.
        assert_eq!(fuse(Fusion::Convex { alpha: 1.0 }, &kw, &vec)[0].0, 2);
    }

    #[test]
    fn an_unreadable_query_ranks_as_keyword_search_does() {
        let kw = [(1, 9.0), (2, 8.0), (3, 1.0)];
        let vec = [(3, 0.9), (4, 0.8), (2, 0.7)];
        for fusion in [Fusion::Rrf { k: 60.0 }, Fusion::Convex { alpha: 0.5 }] {
            let ids = |f: Vec<(i64, f32)>| f.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
            // Not read at all: the keyword order, the vector-only hit last.
            assert_eq!(ids(fuse_for_coverage(fusion, 0.1, &kw, &vec))[..3], [1, 2, 3]);
            // Read well: the same as plain fusion.
            assert_eq!(fuse_for_coverage(fusion, 0.9, &kw, &vec), fuse(fusion, &kw, &vec));
        }
        assert_eq!(vector_trust(0.0), 0.0);
        assert_eq!(vector_trust(0.5), 0.5);
        assert_eq!(vector_trust(1.0), 1.0);
    }
}
