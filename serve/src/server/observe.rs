//! Per-request observation: a request id (the caller's `X-Request-Id` when it sends a sane
//! one, else a new one) on a tracing span around the whole request, echoed in the response;
//! one log line per request; request counts and latency by route for `/metrics`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::Error;
use tracing::Instrument;

use crate::metrics::METRICS;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = request_id(&req);
    // The route template, not the path: bounded label values for the metrics.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %req.path());
    let start = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    METRICS.http_requests.with_label_values(&[&route, &method, status.as_str()]).inc();
    METRICS.http_seconds.with_label_values(&[&route, &method]).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(target: "kb::http", status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, route = %route, "request")
    });
    let mut res = result?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    Ok(res)
}
