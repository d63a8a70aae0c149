//! The PDF worker as a program of its own, for the ingest crate's tests; `kb pdf-worker` is the
//! same worker inside the `kb` binary. Both run the one entry point, `parse::pdf_worker_main`.

fn main() {
    std::process::exit(kb_ingest::parse::pdf_worker_main());
}
