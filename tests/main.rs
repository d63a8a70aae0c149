//! The `kb` package's integration tests, one binary (`cargo test -p kb --test integration`):
//! one module per file, the shared harness in `common/`. A new test file is one `mod` line
//! here; it reaches the harness as `crate::common`.

mod common;

mod answers;
mod bulk;
mod deepseek_serve;
mod formats;
mod multilingual;
mod operations;
mod retrieval;
mod service;
