//! API keys on requests: `Authorization: Bearer <key>`. While the database holds no key the API
//! is open, and `kb serve` then refuses to listen beyond loopback; once a key exists, every
//! API request must carry a valid one.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use kb_index::store::{Access, ApiKey};
use kb_index::IndexError;
use sha2::{Digest, Sha256};

use crate::server::error::ApiError;
use crate::server::State;

/// A new random key: shown to its owner once, stored only as its hash.
pub fn new_key() -> String {
    format!("kb_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// Keys are 256 random bits, so a plain SHA-256 is enough (no password stretching needed).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Who is calling: `None` while the API is open (no keys exist).
pub struct Caller(Option<ApiKey>);

impl Caller {
    /// Rights on `collection`, or 404 for a collection the key cannot see (as if it did not
    /// exist, so a key learns nothing about other collections) and 403 for too few rights.
    pub fn require(&self, collection: &str, need: Access) -> Result<(), ApiError> {
        let Some(key) = &self.0 else { return Ok(()) };
        match key.access(collection) {
            None => Err(IndexError::CollectionNotFound(collection.to_owned()).into()),
            Some(have) if have >= need => Ok(()),
            Some(_) => Err(ApiError::Forbidden(format!(
                "API key {:?} may read but not change collection {collection}",
                key.name
            ))),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match &self.0 {
            Some(key) if !key.admin => Err(ApiError::Forbidden(format!(
                "API key {:?} is not an admin key: creating and deleting collections needs one",
                key.name
            ))),
            _ => Ok(()),
        }
    }

    pub fn sees(&self, collection: &str) -> bool {
        self.0.as_ref().is_none_or(|k| k.access(collection).is_some())
    }
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<State>>().cloned();
        let header = req.headers().get(AUTHORIZATION).map(|v| v.to_str().ok().and_then(bearer).map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("service state missing".into()))?;
            let store = state.engine().store();
            match header {
                Some(None) => {
                    Err(ApiError::Unauthorized("malformed Authorization header: expected \"Bearer <key>\"".into()))
                }
                Some(Some(token)) => match store.api_key_by_hash(&hash_key(&token)).await? {
                    Some(key) => Ok(Caller(Some(key))),
                    None => Err(ApiError::Unauthorized("unknown API key".into())),
                },
                None if store.has_api_keys().await? => Err(ApiError::Unauthorized(
                    "this server requires an API key: send \"Authorization: Bearer <key>\"".into(),
                )),
                None => Ok(Caller(None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer kb_abc"), Some("kb_abc"));
        assert_eq!(bearer("bearer  kb_abc "), Some("kb_abc"));
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), a);
    }
}
