//! The web UI from `web/`, embedded in the binary (release builds) or read from the source
//! tree (debug builds, so the UI can be edited without recompiling).

use std::borrow::Cow;
use std::path::{Component, Path};

use actix_web::http::header;
use actix_web::{get, web, HttpResponse};

use crate::server::error::ApiError;
use crate::server::State;

#[derive(rust_embed::Embed)]
#[folder = "../web/"]
#[exclude = "node_modules/*"]
#[exclude = "tests/*"]
#[exclude = "package*.json"]
struct Assets;

/// No inline script, nothing from elsewhere: text from documents can never become code.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file of the UI: from `web_dir` when configured (editing the UI without rebuilding),
/// else the embedded copy.
fn load(web_dir: Option<&Path>, name: &str) -> Option<(Cow<'static, [u8]>, String)> {
    match web_dir {
        Some(dir) => {
            let rel = Path::new(name);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return None;
            }
            let data = std::fs::read(dir.join(rel)).ok()?;
            let mime = mime_guess::from_path(rel).first_or_octet_stream().to_string();
            Some((Cow::Owned(data), mime))
        }
        None => Assets::get(name).map(|f| {
            let mime = f.metadata.mimetype().to_owned();
            (f.data, mime)
        }),
    }
}

#[get("/{path:.*}")]
pub async fn asset(state: web::Data<State>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner();
    let name = if path.is_empty() { "index.html" } else { path.as_str() };
    let (data, mime) = load(state.config().web_dir.as_deref(), name)
        .ok_or_else(|| ApiError::NotFound(format!("no such page: /{path}")))?;
    Ok(HttpResponse::Ok()
        .content_type(mime)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(data.into_owned()))
}
