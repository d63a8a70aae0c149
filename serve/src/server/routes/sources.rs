use actix_web::{get, web, HttpResponse};
use kb_index::store::Access;
use serde_json::json;

use crate::server::auth::Caller;
use crate::server::error::ApiError;
use crate::server::State;

#[utoipa::path(get, path = "/v1/collections/{name}/sources", tag = "collections", params(("name" = String, Path)), responses((status = 200, description = "The folders this collection mirrors (`[[sources]]`) and each one's last sync"), (status = 401, description = "API key missing or unknown", body = crate::server::error::ErrorBody), (status = 404, description = "No such collection (or not visible to the key)", body = crate::server::error::ErrorBody)))]
#[get("/v1/collections/{name}/sources")]
pub async fn list(state: web::Data<State>, caller: Caller, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Read)?;
    let sources = state.sources().of(&name);
    if sources.is_empty() {
        // A collection that exists has simply no sources; an unknown one is a 404.
        state.engine().store().require_collection(&name).await?;
    }
    Ok(HttpResponse::Ok().json(json!({"sources": sources})))
}
