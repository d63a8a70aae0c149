use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::State;

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "documents", params(("id" = i64, Path)), responses((status = 200, body = crate::server::openapi::JobInfo), (status = 400, description = "Bad request", body = crate::server::openapi::ErrorBody), (status = 401, description = "API key missing or unknown", body = crate::server::openapi::ErrorBody), (status = 403, description = "The key lacks the right", body = crate::server::openapi::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::openapi::ErrorBody)))]
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
    Ok(HttpResponse::Ok()
        .json(json!({"id": job.id, "document_id": job.document_id, "status": job.status, "error": job.error})))
}
