//! The ingest crate's integration tests, one binary (`cargo test -p kb-ingest --test integration`):
//! one module per file, the shared helpers in `common/`. A new test file is one `mod` line
//! here; it reaches the helpers as `crate::common`.

mod common;

mod chunking;
mod fixtures;
mod office;
mod pdf_isolation;
