//! `kb keys`: create, list and revoke API keys. A key's secret is printed once, at creation.

use anyhow::bail;
use kb_index::store::{Access, Grant};
use kb_index::Store;

use crate::config::Config;
use crate::server::auth::{hash_key, new_key};

pub enum KeysCommand {
    Create { name: String, admin: bool, read: Vec<String>, write: Vec<String> },
    List,
    Revoke { name: String },
}

pub async fn run(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    config.ensure_dirs()?;
    let store = Store::open(&config.database_url()).await?;
    match command {
        KeysCommand::Create { name, admin, read, write } => {
            if !admin && read.is_empty() && write.is_empty() {
                bail!("a key needs --admin or at least one --read/--write collection");
            }
            if name.trim().is_empty() {
                bail!("a key needs a name");
            }
            let grants: Vec<Grant> = read
                .into_iter()
                .map(|c| Grant { collection: c, access: Access::Read })
                .chain(write.into_iter().map(|c| Grant { collection: c, access: Access::Write }))
                .collect();
            let key = new_key();
            store.create_api_key(&name, &hash_key(&key), admin, &grants).await?;
            eprintln!("created API key {name:?}; it is shown only now:");
            println!("{key}");
        }
        KeysCommand::List => {
            let keys = store.api_keys().await?;
            if keys.is_empty() {
                println!("no API keys (the API is open, and kb serve listens only on loopback)");
            }
            for k in keys {
                let rights = if k.admin {
                    "admin".to_owned()
                } else {
                    k.grants
                        .iter()
                        .map(|g| format!("{}:{}", g.collection, g.access.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("{:<24} {rights}", k.name);
            }
        }
        KeysCommand::Revoke { name } => {
            if !store.revoke_api_key(&name).await? {
                bail!("no API key named {name:?}");
            }
            println!("revoked {name:?}");
        }
    }
    Ok(())
}
