//! `kb feedback export`: the feedback given on answers, one JSON object a line.

use std::io::Write;

use anyhow::Context;
use kb_index::Store;

use crate::config::Config;

pub async fn export(config: Config, collection: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url()).await.context("opening the database")?;
    for f in store.feedback(collection).await? {
        writeln!(out, "{}", serde_json::to_string(&f)?)?;
    }
    out.flush()?;
    Ok(())
}
