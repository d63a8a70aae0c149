//! The index crate's integration tests, one binary (`cargo test -p kb-index --test integration`):
//! the engine over in-memory SQLite and a deterministic test embedder (`common/`), no model
//! weights. A new test file is one `mod` line here; it reaches the helpers as `crate::common`.

mod common;

mod engine;
