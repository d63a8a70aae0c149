//! The HNSW vector index of one collection (hnsw_rs, cosine distance), persisted under its
//! directory. hnsw_rs cannot delete points: deleted chunk ids are filtered out at search time
//! and the owner rebuilds the graph from the database once they pass a share of the points.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};

use crate::distance::{normalized, UnitCosine};
use crate::{IndexError, Result};

const BASENAME: &str = "vectors";
const META: &str = "meta.json";

/// Numbers each save's scratch directories, so that two saves never share one.
static SAVE_SEQ: AtomicU64 = AtomicU64::new(0);

/// HNSW build and search parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HnswParams {
    /// Links per node (M).
    pub m: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size at search time (at least k).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 200, ef_search: 128 }
    }
}

/// What is stored beside the graph: the chunk ids it holds and those deleted since.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    dim: usize,
    params: Option<HnswParams>,
    applied: Vec<i64>,
    deleted: Vec<i64>,
}

/// A collection's HNSW graph over chunk embeddings (cosine), with the chunk ids it holds.
pub struct VectorIndex {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    dim: usize,
    params: HnswParams,
    /// Guarded apart from the graph, which hnsw_rs lets searches read while inserts run.
    applied: Mutex<HashSet<i64>>,
    deleted: RwLock<HashSet<i64>>,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io { path: path.to_owned(), source }
}

impl VectorIndex {
    /// An empty index of `dim`-wide vectors, to be saved in `dir`.
    pub fn new(dir: &Path, dim: usize, params: HnswParams, expected_points: usize) -> Self {
        let hnsw = Hnsw::new(params.m, expected_points.max(10_000), 16, params.ef_construction, UnitCosine);
        Self { hnsw, dim, params, applied: Mutex::default(), deleted: RwLock::default(), dir: dir.to_owned() }
    }

    /// Loads the index saved in `dir`; `None` when there is none or it is unreadable or built
    /// with other parameters (the caller rebuilds it from the database).
    pub fn load(dir: &Path, dim: usize, params: &HnswParams) -> Option<Self> {
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META)).ok()?).ok()?;
        if meta.dim != dim || meta.params.as_ref() != Some(params) {
            return None;
        }
        let hnsw = if meta.applied.is_empty() {
            Hnsw::new(params.m, 10_000, 16, params.ef_construction, UnitCosine)
        } else {
            // The loaded graph borrows from its loader; one loader per load lives as long as
            // the process, which is a few hundred bytes per index load.
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
            match io.load_hnsw::<f32, UnitCosine>() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "vector index unreadable; rebuilding");
                    return None;
                }
            }
        };
        Some(Self {
            hnsw,
            dim,
            params: params.clone(),
            applied: Mutex::new(meta.applied.into_iter().collect()),
            deleted: RwLock::new(meta.deleted.into_iter().collect()),
            dir: dir.to_owned(),
        })
    }

    /// Writes graph and meta to a fresh directory, then swaps it in, so a crash mid-save
    /// leaves the previous index whole. The caller serialises saves with inserts: a graph
    /// dumped while points arrive could hold ids its meta does not list.
    pub fn save(&self) -> Result<()> {
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let seq = SAVE_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".vectors-tmp-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut applied: Vec<i64> = lock(&self.applied).iter().copied().collect();
        applied.sort_unstable();
        let mut deleted: Vec<i64> = read(&self.deleted).iter().copied().collect();
        deleted.sort_unstable();
        if !applied.is_empty() {
            self.hnsw.file_dump(&tmp, BASENAME).map_err(|e| IndexError::Vector(format!("saving: {e}")))?;
        }
        let meta = Meta { dim: self.dim, params: Some(self.params.clone()), applied, deleted };
        let bytes = serde_json::to_vec(&meta).map_err(|e| IndexError::Vector(e.to_string()))?;
        fs::write(tmp.join(META), bytes).map_err(io_err(&tmp))?;
        let old = parent.join(format!(".vectors-old-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&old);
        if self.dir.exists() {
            fs::rename(&self.dir, &old).map_err(io_err(&self.dir))?;
        }
        fs::rename(&tmp, &self.dir).map_err(io_err(&self.dir))?;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }

    /// Adds vectors; ids already present are skipped.
    pub fn insert(&self, points: &[(i64, Vec<f32>)]) -> Result<()> {
        if let Some((id, v)) = points.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(IndexError::Vector(format!(
                "chunk {id} has a {}-dimensional vector, the index holds {}",
                v.len(),
                self.dim
            )));
        }
        let fresh: Vec<(Vec<f32>, usize)> = {
            let mut applied = lock(&self.applied);
            // Claimed before inserting, so two concurrent inserts never add one id twice.
            points.iter().filter(|(id, _)| applied.insert(*id)).map(|(id, v)| (normalized(v), *id as usize)).collect()
        };
        let fresh: Vec<(&Vec<f32>, usize)> = fresh.iter().map(|(v, id)| (v, *id)).collect();
        self.hnsw.parallel_insert(&fresh);
        Ok(())
    }

    /// Marks these chunks deleted: searches skip them until a rebuild drops them.
    pub fn remove(&self, ids: &[i64]) {
        let applied = lock(&self.applied);
        let mut deleted = write(&self.deleted);
        deleted.extend(ids.iter().filter(|id| applied.contains(id)));
    }

    /// Ids the graph holds and that are not deleted.
    pub fn live_ids(&self) -> HashSet<i64> {
        let deleted = read(&self.deleted);
        lock(&self.applied).iter().copied().filter(|id| !deleted.contains(id)).collect()
    }

    /// Share of graph points that are deleted: past a threshold, rebuild.
    pub fn deleted_share(&self) -> f64 {
        let applied = lock(&self.applied).len();
        if applied == 0 {
            0.0
        } else {
            read(&self.deleted).len() as f64 / applied as f64
        }
    }

    /// Chunks the index holds, deleted ones not counted.
    pub fn len(&self) -> usize {
        lock(&self.applied).len() - read(&self.deleted).len()
    }

    /// Whether it holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest live chunks: (chunk id, cosine similarity), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(i64, f32)> {
        if self.hnsw.get_nb_point() == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let ef = self.params.ef_search.max(k);
        let query = normalized(query);
        let query = query.as_slice();
        let deleted = read(&self.deleted);
        let hits = if deleted.is_empty() {
            self.hnsw.search(query, k, ef)
        } else {
            let live = |id: &usize| !deleted.contains(&(*id as i64));
            self.hnsw.search_filter(query, k, ef, Some(&live))
        };
        hits.into_iter().map(|n| (n.d_id as i64, 1.0 - n.distance)).collect()
    }
}

// A poisoned lock only means another thread panicked mid-update of a plain set; the set
// itself is still usable, and the database remains the truth.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}
