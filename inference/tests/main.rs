//! The inference crate's integration tests, one binary (`cargo test -p kb-inference --test integration`):
//! one module per file. A new test file is one `mod` line here.

mod bert;
mod deepseek;
mod deepseek_int4;
mod deepseek_scheduler;
mod deepseek_tokenizer;
mod smollm;
mod xlmr;
