//! The one place where errors become HTTP answers: `{"error": {"code", "message"}}`.
//!
//! `ApiError::entry` is the table: every variant of kb's own errors and of the library
//! errors it carries ([`IndexError`], [`IngestError`], [`ModelError`]) has its row, in one
//! match with no catch-all arm, so a variant added to a library fails to compile here until
//! someone decides its status and code (instead of silently becoming a 500).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use kb_index::IndexError;
use kb_inference::ModelError;
use kb_ingest::IngestError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client is told to wait when the generator's own queue or cache is full.
const GENERATOR_BUSY_RETRY_SECS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Overloaded or not ready: the client should retry after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u32 },
    #[error("upload larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client stopped sending its request body.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    /// One document's ingest error; `From` unwraps the store's and the model's errors it
    /// carries into [`ApiError::Index`] and [`ApiError::Model`], so they keep their rows.
    #[error(transparent)]
    Ingest(IngestError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Index(e) => Self::Index(e),
            IngestError::Embed(e) => Self::Model(e),
            e @ (IngestError::UnsupportedFormat { .. }
            | IngestError::Empty
            | IngestError::Undecodable
            | IngestError::Pdf { .. }
            | IngestError::Encrypted { .. }
            | IngestError::Parse { .. }
            | IngestError::PdfTimeout { .. }
            | IngestError::NoText
            | IngestError::Io(_)
            | IngestError::Task(_)) => Self::Ingest(e),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `collection_not_found`.
    pub code: String,
    pub message: String,
}

/// The error responses every `/v1` route may give, for the OpenAPI document; a route lists
/// its own others (409, 413, 503) beside it.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Never built: its variants describe responses `ApiError` makes.
pub enum ErrorResponses {
    #[response(status = 400, description = "Bad request")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "API key missing or unknown")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The key lacks the right")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such collection (or not visible to the key)")]
    NotFound(ErrorBody),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    /// The table: each error's HTTP status and stable code.
    #[deny(clippy::wildcard_enum_match_arm)]
    fn entry(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        const INTERNAL: (StatusCode, &str) = (StatusCode::INTERNAL_SERVER_ERROR, "internal");
        match self {
            Self::BadRequest { code, .. } => (S::BAD_REQUEST, *code),
            Self::NotFound(_) => (S::NOT_FOUND, "not_found"),
            Self::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            Self::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "unavailable"),
            Self::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Timeout(_) => (S::REQUEST_TIMEOUT, "request_timeout"),
            Self::Internal(_) => INTERNAL,

            Self::Index(IndexError::CollectionNotFound(_)) => (S::NOT_FOUND, "collection_not_found"),
            Self::Index(IndexError::DocumentNotFound(_)) => (S::NOT_FOUND, "document_not_found"),
            Self::Index(IndexError::CollectionExists(_)) => (S::CONFLICT, "collection_exists"),
            Self::Index(IndexError::InvalidName { .. }) => (S::BAD_REQUEST, "invalid_name"),
            Self::Index(IndexError::KeyExists(_)) => (S::CONFLICT, "key_exists"),
            Self::Index(IndexError::EmbedderMismatch { .. }) => (S::CONFLICT, "embedder_mismatch"),
            Self::Index(IndexError::ReembedIncomplete { .. }) => (S::CONFLICT, "reembed_incomplete"),
            Self::Index(
                IndexError::Database(_)
                | IndexError::Migration(_)
                | IndexError::Keyword(_)
                | IndexError::Vector(_)
                | IndexError::Embed(_)
                | IndexError::Io { .. }
                | IndexError::Task(_),
            ) => INTERNAL,

            Self::Ingest(IngestError::UnsupportedFormat { .. }) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_format"),
            Self::Ingest(IngestError::Empty) => (S::BAD_REQUEST, "empty_document"),
            Self::Ingest(IngestError::Undecodable) => (S::UNSUPPORTED_MEDIA_TYPE, "undecodable"),
            Self::Ingest(IngestError::Pdf { .. }) => (S::UNPROCESSABLE_ENTITY, "invalid_pdf"),
            Self::Ingest(IngestError::Encrypted { .. }) => (S::UNPROCESSABLE_ENTITY, "encrypted"),
            Self::Ingest(IngestError::Parse { .. }) => (S::UNPROCESSABLE_ENTITY, "invalid_document"),
            Self::Ingest(IngestError::PdfTimeout { .. }) => (S::UNPROCESSABLE_ENTITY, "pdf_timeout"),
            Self::Ingest(IngestError::NoText) => (S::UNPROCESSABLE_ENTITY, "no_text"),
            // `From<IngestError>` moves these two into `Index` and `Model`.
            Self::Ingest(IngestError::Index(_) | IngestError::Embed(_)) => INTERNAL,
            Self::Ingest(IngestError::Io(_) | IngestError::Task(_)) => INTERNAL,

            // The generator's queue or cache is full: a moment later it may not be.
            Self::Model(ModelError::Busy(_)) => (S::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Model(ModelError::ContextOverflow { .. } | ModelError::InvalidInput(_)) => {
                (S::BAD_REQUEST, "invalid_request")
            }
            Self::Model(
                ModelError::MissingFile { .. }
                | ModelError::Config { .. }
                | ModelError::Unsupported(_)
                | ModelError::Tokenizer(_)
                | ModelError::Candle(_)
                | ModelError::MissingTensor { .. }
                | ModelError::ShapeMismatch { .. }
                | ModelError::Checkpoint { .. }
                | ModelError::Io { .. },
            ) => INTERNAL,
        }
    }

    /// The stable machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        self.entry().1
    }

    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    fn retry_after(&self) -> Option<u32> {
        if let Self::Unavailable { retry_after, .. } = self {
            return Some(*retry_after);
        }
        if let Self::Model(ModelError::Busy(_)) = self {
            return Some(GENERATOR_BUSY_RETRY_SECS);
        }
        None
    }

    /// The response body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message: self.to_string() } }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.entry().0
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Self::Unauthorized(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(seconds) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(self.body())
    }
}

/// Malformed JSON bodies and bad path/query values, in the same error shape.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::ContentType => ApiError::bad_request("unsupported_content_type", "expected Content-Type: application/json"),
        J::Deserialize(e) if e.is_data() => ApiError::BadRequest { code: "invalid_request", message: e.to_string() },
        // Not an enum this service owns (and `#[non_exhaustive]`): the rest are malformed bodies.
        _ => ApiError::bad_request("malformed_json", err.to_string()),
    };
    api.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_keep_their_rows_through_ingest() {
        let e = ApiError::from(IngestError::Index(IndexError::CollectionNotFound("c".into())));
        assert_eq!((e.status_code(), e.code()), (StatusCode::NOT_FOUND, "collection_not_found"));
        let e = ApiError::from(IngestError::Embed(ModelError::Busy("full".into())));
        assert_eq!(
            (e.status_code(), e.code(), e.retry_after()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(2))
        );
        let e = ApiError::from(IngestError::UnsupportedFormat { detected: "zip".into() });
        assert_eq!(e.status_code(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn the_body_is_the_error_shape() {
        let body = serde_json::to_value(ApiError::from(IndexError::CollectionExists("c".into())).body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "collection_exists", "message": "collection already exists: c"}})
        );
    }
}
