//! One module per resource: a route parses the request, calls the engine, shapes the answer.

pub mod ask;
pub mod chat;
pub mod collections;
pub mod documents;
pub mod health;
pub mod jobs;
pub mod search;
