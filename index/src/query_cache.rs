//! A bounded map from query text to its embedding. Eviction is oldest-inserted first: cheap,
//! and good enough for the repeats it serves (a question probed then searched, popular queries).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The cached embeddings by query, and the queries in insertion order (for eviction).
type Entries = (HashMap<String, Arc<Vec<f32>>>, VecDeque<String>);

pub struct QueryCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

impl QueryCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::default() }
    }

    pub fn get(&self, query: &str) -> Option<Arc<Vec<f32>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.get(query).cloned()
    }

    pub fn put(&self, query: &str, vector: Arc<Vec<f32>>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(query.to_owned(), vector).is_none() {
            order.push_back(query.to_owned());
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_capacity() {
        let c = QueryCache::new(2);
        for q in ["a", "b", "c"] {
            c.put(q, Arc::new(vec![1.0]));
        }
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some() && c.get("c").is_some());
        let off = QueryCache::new(0);
        off.put("a", Arc::new(vec![1.0]));
        assert!(off.get("a").is_none());
    }
}
