use kb_index::{SearchMode, SearchRequest};

use crate::app::App;
use crate::config::Config;

pub async fn run(
    config: Config,
    collection: &str,
    mode: SearchMode,
    top_k: usize,
    distinct: bool,
    query: &str,
) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let c = app.engine.collection(collection).await?;
    let started = std::time::Instant::now();
    let req = SearchRequest { query: query.to_owned(), top_k, mode, distinct_documents: distinct };
    let hits = app.engine.search(&c, &req).await?;
    let elapsed = started.elapsed();
    for (rank, h) in hits.iter().enumerate() {
        let page = h.chunk.page.map(|p| format!(" p.{p}")).unwrap_or_default();
        println!("{:>2}. {:.4}  {}{}  [chunk {}]", rank + 1, h.score, h.chunk.filename, page, h.chunk.id);
        let text: String = h.chunk.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = text.chars().take(240).collect();
        println!("    {shown}{}", if text.chars().count() > 240 { "…" } else { "" });
    }
    eprintln!("{} hits in {:.1} ms", hits.len(), elapsed.as_secs_f64() * 1000.0);
    Ok(())
}
