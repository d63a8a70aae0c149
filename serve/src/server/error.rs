//! The one place where errors become HTTP answers: `{"error": {"code", "message"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use kb_index::IndexError;
use serde_json::json;

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
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<kb_inference::ModelError> for ApiError {
    fn from(e: kb_inference::ModelError) -> Self {
        use kb_inference::ModelError as M;
        match e {
            // The generator's queue or cache is full: a moment later it may not be.
            M::Busy(message) => {
                Self::Unavailable { message: format!("the generator is busy: {message}"), retry_after: 2 }
            }
            e @ (M::ContextOverflow { .. } | M::InvalidInput(_)) => Self::bad_request("invalid_request", e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable { .. } => "unavailable",
            Self::TooLarge { .. } => "payload_too_large",
            Self::Timeout(_) => "request_timeout",
            Self::Index(e) => match e {
                IndexError::CollectionNotFound(_) => "collection_not_found",
                IndexError::DocumentNotFound(_) => "document_not_found",
                IndexError::CollectionExists(_) => "collection_exists",
                IndexError::InvalidName { .. } => "invalid_name",
                IndexError::EmbedderMismatch { .. } => "embedder_mismatch",
                IndexError::KeyExists(_) => "key_exists",
                _ => "internal",
            },
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Index(e) => match e {
                IndexError::CollectionNotFound(_) | IndexError::DocumentNotFound(_) => StatusCode::NOT_FOUND,
                IndexError::CollectionExists(_) => StatusCode::CONFLICT,
                IndexError::InvalidName { .. } => StatusCode::BAD_REQUEST,
                IndexError::EmbedderMismatch { .. } | IndexError::KeyExists(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Unavailable { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

/// Malformed JSON bodies and bad path/query values, in the same error shape.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::ContentType => ApiError::bad_request("unsupported_content_type", "expected Content-Type: application/json"),
        J::Deserialize(e) if e.is_data() => ApiError::BadRequest { code: "invalid_request", message: e.to_string() },
        _ => ApiError::bad_request("malformed_json", err.to_string()),
    };
    api.into()
}
