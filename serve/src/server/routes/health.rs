use actix_web::{get, web, HttpResponse};
use kb_index::store::JobStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::METRICS;
use crate::server::State;

/// Liveness and readiness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness), `ready` or `starting` (readiness).
    status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "The process is up", body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Prometheus metrics. Job gauges are read from the database, which other processes
/// (`kb ingest`) may also change.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<State>) -> HttpResponse {
    for status in [JobStatus::Queued, JobStatus::Running] {
        if let Ok(n) = state.engine().store().count_jobs(status).await {
            METRICS.jobs_current.with_label_values(&[status.as_str()]).set(n);
        }
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(METRICS.render())
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, description = "Models and indexes are loaded", body = Health), (status = 503, description = "Still starting", body = Health)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state.ready() {
        HttpResponse::Ok().json(Health { status: "ready" })
    } else {
        HttpResponse::ServiceUnavailable().json(Health { status: "starting" })
    }
}
