//! API keys: a name, a SHA-256 of the secret (the secret itself is shown once, never stored),
//! and either admin rights or grants on named collections.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Store};
use crate::{IndexError, Result};

/// What a key may do with a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Search, ask, chat and list.
    Read,
    /// Also upload and delete documents.
    Write,
}

impl Access {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// A right on one collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grant {
    /// The collection's name.
    pub collection: String,
    /// What the key may do there.
    pub access: Access,
}

/// An API key as stored: its name and rights, never the secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    /// The key id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// Every right on every collection, including creating and deleting them.
    pub admin: bool,
    /// Its rights on named collections.
    pub grants: Vec<Grant>,
}

impl ApiKey {
    /// What this key may do in `collection`: `None` when it may not even see it.
    pub fn access(&self, collection: &str) -> Option<Access> {
        if self.admin {
            return Some(Access::Write);
        }
        self.grants.iter().filter(|g| g.collection == collection).map(|g| g.access).max()
    }
}

fn parse_access(s: &str) -> Access {
    if s == "write" {
        Access::Write
    } else {
        Access::Read
    }
}

impl Store {
    /// Stores a key by the hash of its secret.
    pub async fn create_api_key(&self, name: &str, key_hash: &str, admin: bool, grants: &[Grant]) -> Result<ApiKey> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO api_keys (name, key_hash, admin, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(key_hash)
        .bind(admin as i64)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| IndexError::KeyExists(name.to_owned()))?;
        let id: i64 = row.try_get(0)?;
        for g in grants {
            sqlx::query(
                "INSERT INTO api_key_grants (key_id, collection, access) VALUES ($1, $2, $3)
                 ON CONFLICT (key_id, collection) DO UPDATE SET access = excluded.access",
            )
            .bind(id)
            .bind(&g.collection)
            .bind(g.access.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ApiKey { id, name: name.to_owned(), admin, grants: grants.to_vec() })
    }

    /// The key whose secret hashes to `key_hash`, with its grants, in one query (this runs on
    /// every authenticated request).
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, k.admin, g.collection, g.access
             FROM api_keys k LEFT JOIN api_key_grants g ON g.key_id = k.id
             WHERE k.key_hash = $1 ORDER BY g.collection",
        )
        .bind(key_hash)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let mut key = ApiKey {
            id: first.try_get(0)?,
            name: first.try_get(1)?,
            admin: first.try_get::<i64, _>(2)? != 0,
            grants: Vec::new(),
        };
        for r in &rows {
            if let Some(collection) = r.try_get::<Option<String>, _>(3)? {
                key.grants.push(Grant { collection, access: parse_access(&r.try_get::<String, _>(4)?) });
            }
        }
        Ok(Some(key))
    }

    async fn with_grants(&self, id: i64, name: String, admin: bool) -> Result<ApiKey> {
        let rows = sqlx::query("SELECT collection, access FROM api_key_grants WHERE key_id = $1 ORDER BY collection")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let grants = rows
            .iter()
            .map(|r| Ok(Grant { collection: r.try_get(0)?, access: parse_access(&r.try_get::<String, _>(1)?) }))
            .collect::<Result<Vec<_>>>()?;
        Ok(ApiKey { id, name, admin, grants })
    }

    /// Every API key with its grants, by name.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query("SELECT id, name, admin FROM api_keys ORDER BY name").fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.with_grants(r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? != 0).await?);
        }
        Ok(out)
    }

    /// Whether any key exists: then every API request must carry one.
    pub async fn has_api_keys(&self) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_keys").fetch_one(&self.pool).await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Deletes a key; false when there was none of that name.
    pub async fn revoke_api_key(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE name = $1").bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}
