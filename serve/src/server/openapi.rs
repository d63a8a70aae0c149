//! The OpenAPI 3 document served at `/openapi.json`, generated from the route annotations and
//! the response types the handlers return (declared beside them). `docs/openapi.json` is
//! this document committed; a test fails when they differ (`KB_UPDATE_OPENAPI=1` rewrites it).

use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "kb", description = "Enterprise knowledge base: collections of documents, hybrid search, grounded answers with citations."),
    paths(
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
        routes::collections::create,
        routes::collections::list,
        routes::collections::remove,
        routes::documents::upload,
        routes::documents::list,
        routes::documents::remove,
        routes::jobs::get,
        routes::search::search,
        routes::ask::ask,
        routes::chat::completions,
        routes::sources::list,
        routes::feedback::create,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("kb API key (kb keys create)"))
                    .build(),
            ),
        );
    }
}

#[actix_web::get("/openapi.json")]
pub async fn document() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document, for clients and reviewers: a changed response shows in the diff.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    #[test]
    fn the_committed_openapi_document_is_current() {
        let generated = ApiDoc::openapi().to_pretty_json().expect("OpenAPI document as JSON") + "\n";
        if std::env::var_os("KB_UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).expect("writing docs/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        if let Some((line, (old, new))) =
            committed.lines().zip(generated.lines()).enumerate().find(|(_, (old, new))| old != new)
        {
            panic!(
                "docs/openapi.json differs from the document the code generates, first at line {}:\n  \
                 committed: {old}\n  generated: {new}\nif the change is meant, run \
                 `KB_UPDATE_OPENAPI=1 cargo test -p kb --lib openapi` and commit the file",
                line + 1
            );
        }
        assert_eq!(committed.lines().count(), generated.lines().count(), "docs/openapi.json is out of date");
    }
}
