//! Feedback on answers: a rating, an optional comment, and the answer as it was shown.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{now_ms, Store};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// A thumbs up or down on an answer.
pub enum Rating {
    /// The answer helped.
    Up,
    /// It did not.
    Down,
}

impl Rating {
    /// As stored: `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
        }
    }
}

/// Feedback to store.
#[derive(Debug, Clone)]
pub struct NewFeedback<'a> {
    /// The collection the answer came from.
    pub collection: &'a str,
    /// Up or down.
    pub rating: Rating,
    /// What the person wrote, if anything.
    pub comment: Option<&'a str>,
    /// The question as asked.
    pub question: &'a str,
    /// The answer as shown.
    pub answer: &'a str,
    /// The citations as shown, a JSON array.
    pub citations: &'a serde_json::Value,
}

/// Stored feedback, as `kb feedback export` writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feedback {
    /// Its row id.
    pub id: i64,
    /// The collection the answer came from.
    pub collection: String,
    /// Up or down.
    pub rating: Rating,
    /// What the person wrote, if anything.
    pub comment: Option<String>,
    /// The question as asked.
    pub question: String,
    /// The answer as shown.
    pub answer: String,
    /// The citations as shown, a JSON array.
    pub citations: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl Store {
    /// Stores feedback; returns its id.
    pub async fn add_feedback(&self, f: &NewFeedback<'_>) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO feedback (collection, rating, comment, question, answer, citations, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(f.collection)
        .bind(f.rating.as_str())
        .bind(f.comment)
        .bind(f.question)
        .bind(f.answer)
        .bind(f.citations.to_string())
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// All feedback, oldest first; only `collection`'s when given.
    pub async fn feedback(&self, collection: Option<&str>) -> Result<Vec<Feedback>> {
        const COLUMNS: &str =
            "SELECT id, collection, rating, comment, question, answer, citations, created_at FROM feedback";
        let rows = match collection {
            Some(c) => {
                sqlx::query(&format!("{COLUMNS} WHERE collection = $1 ORDER BY id"))
                    .bind(c)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(&format!("{COLUMNS} ORDER BY id")).fetch_all(&self.pool).await?,
        };
        rows.iter()
            .map(|r| {
                let rating: String = r.try_get(2)?;
                let citations: String = r.try_get(6)?;
                Ok(Feedback {
                    id: r.try_get(0)?,
                    collection: r.try_get(1)?,
                    rating: if rating == "up" { Rating::Up } else { Rating::Down },
                    comment: r.try_get(3)?,
                    question: r.try_get(4)?,
                    answer: r.try_get(5)?,
                    citations: serde_json::from_str(&citations).unwrap_or(serde_json::Value::Null),
                    created_at: r.try_get(7)?,
                })
            })
            .collect()
    }
}
