use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::server::error::ApiError;
use crate::server::State;

#[get("/v1/jobs/{id}")]
pub async fn get(state: web::Data<State>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let job = state
        .engine()
        .store()
        .job(*id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job not found: {id}")))?;
    Ok(HttpResponse::Ok().json(json!({"id": job.id, "document_id": job.document_id, "status": job.status, "error": job.error})))
}
