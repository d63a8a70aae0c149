fn main() {
    std::process::exit(kb_ingest::parse::pdf::pdf_worker_main());
}
