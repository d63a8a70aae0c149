use kb_index::Store;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.ensure_dirs()?;
    let store = Store::open(&config.database_url()).await?;
    let all = store.collection_summaries().await?;
    if all.is_empty() {
        println!("no collections");
    }
    println!("{:<32} {:>10} {:>10}", "collection", "documents", "chunks");
    for c in all {
        println!("{:<32} {:>10} {:>10}", c.name, c.documents, c.chunks);
    }
    Ok(())
}
