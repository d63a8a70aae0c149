//! `kb reembed`: switch a collection to the configured embedder.

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::config::Config;

pub async fn run(config: Config, collection: &str, batch: usize) -> anyhow::Result<()> {
    let app = App::open(config).await?;
    let embedder = app.engine.embedder().id().to_owned();
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} chunks  {elapsed_precise}  {per_sec}")?);
    let started = std::time::Instant::now();
    let switched = app
        .engine
        .reembed(collection, batch, &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish_and_clear();
    if switched == 0 {
        println!("{collection}: already embedded with {embedder}");
    } else {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{collection}: {switched} chunks re-embedded with {embedder} in {secs:.1} s ({:.1} chunks/s)",
            switched as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
