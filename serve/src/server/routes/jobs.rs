use actix_web::{get, web, HttpResponse};
use kb_index::store::Job;
use serde::Serialize;
use utoipa::ToSchema;

use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorResponses};
use crate::server::State;

#[derive(Serialize, ToSchema)]
pub struct JobInfo {
    id: i64,
    document_id: i64,
    /// `queued`, `running`, `done` or `failed`.
    status: String,
    error: Option<String>,
}

impl From<Job> for JobInfo {
    fn from(j: Job) -> Self {
        Self { id: j.id, document_id: j.document_id, status: j.status.as_str().to_owned(), error: j.error }
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "documents", params(("id" = i64, Path)), responses((status = 200, body = JobInfo), ErrorResponses))]
#[get("/v1/jobs/{id}")]
pub async fn get(state: web::Data<State>, caller: Caller, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let store = state.engine().store();
    let not_found = || ApiError::NotFound(format!("job not found: {id}"));
    let job = store.job(*id).await?.ok_or_else(not_found)?;
    // A job is visible to whoever may read its document's collection.
    let doc = store.document(job.document_id).await?.ok_or_else(not_found)?;
    let c = store.collection_by_id(doc.collection_id).await?.ok_or_else(not_found)?;
    if !caller.sees(&c.name) {
        return Err(not_found());
    }
    Ok(HttpResponse::Ok().json(JobInfo::from(job)))
}
