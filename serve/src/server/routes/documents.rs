use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use futures_util::TryStreamExt;
use kb_index::store::{Access, Document, DocumentStatus};
use kb_ingest::pipeline::Registered;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::server::auth::Caller;
use crate::server::error::{ApiError, ErrorBody, ErrorResponses};
use crate::server::State;

/// A client-given file name reduced to a plain name: no directories, no control characters,
/// no leading dots, bounded length.
pub fn sanitize_filename(raw: &str) -> Option<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return None;
    }
    Some(cleaned.chars().take(200).collect())
}

/// The multipart request body (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Never built: `receive` streams the parts.
pub struct UploadForm {
    /// One or more files.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    documents: Vec<AcceptedDocument>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AcceptedDocument {
    id: i64,
    filename: String,
    job_id: Option<i64>,
    /// `queued`; for bytes the collection already holds, that document's status.
    status: String,
    /// Present and true when the same bytes were already in the collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentList {
    documents: Vec<DocumentInfo>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentInfo {
    id: i64,
    filename: String,
    title: Option<String>,
    /// `queued`, `running`, `done` or `failed`.
    status: String,
    chunks: i64,
    error: Option<String>,
    size: i64,
    format: Option<String>,
    /// Which extractor produced the text (PDF: pdf-extract, pdftotext, ocr).
    extractor: Option<String>,
    /// The document that carried this one: the e-mail message of an attachment, which is
    /// named "MESSAGE/ATTACHMENT" and deleted with its message.
    parent_id: Option<i64>,
}

impl From<Document> for DocumentInfo {
    fn from(d: Document) -> Self {
        Self {
            id: d.id,
            filename: d.filename,
            title: d.title,
            status: d.status.as_str().to_owned(),
            chunks: d.chunks,
            error: d.error,
            size: d.size_bytes,
            format: d.format,
            extractor: d.extractor,
            parent_id: d.parent_id,
        }
    }
}

struct Upload {
    filename: String,
    path: std::path::PathBuf,
    hash: String,
    size: u64,
}

/// Streams each `file` part to disk, hashing as it goes; never holds a whole file in memory.
async fn receive(state: &State, mut payload: Multipart) -> Result<Vec<Upload>, ApiError> {
    let limit = state.config().max_upload_bytes;
    let idle = std::time::Duration::from_secs(state.config().upload_idle_secs.max(1));
    let stalled = || ApiError::Timeout(format!("the upload sent nothing for {} s and was cut off", idle.as_secs()));
    let mut uploads: Vec<Upload> = Vec::new();
    let fail = |uploads: &[Upload], err: ApiError| {
        for u in uploads {
            let _ = std::fs::remove_file(&u.path);
        }
        err
    };
    loop {
        let next = tokio::time::timeout(idle, payload.try_next()).await.map_err(|_| fail(&uploads, stalled()))?;
        let field = match next {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(fail(&uploads, ApiError::bad_request("invalid_multipart", e.to_string()))),
        };
        if field.name() != Some("file") {
            continue;
        }
        let raw = field.content_disposition().and_then(|d| d.get_filename()).unwrap_or("").to_owned();
        let Some(filename) = sanitize_filename(&raw) else {
            return Err(fail(
                &uploads,
                ApiError::bad_request("invalid_filename", format!("unusable file name {raw:?}")),
            ));
        };
        let path = state.config().upload_dir().join(format!("incoming-{}", uuid::Uuid::new_v4()));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::Internal(format!("creating upload file: {e}")))?;
        uploads.push(Upload { filename, path: path.clone(), hash: String::new(), size: 0 });
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut field = field;
        loop {
            let next = tokio::time::timeout(idle, field.try_next()).await.map_err(|_| fail(&uploads, stalled()))?;
            let chunk = match next {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(fail(&uploads, ApiError::bad_request("invalid_multipart", e.to_string()))),
            };
            size += chunk.len() as u64;
            if size > limit {
                return Err(fail(&uploads, ApiError::TooLarge { limit }));
            }
            hasher.update(&chunk);
            if let Err(e) = file.write_all(&chunk).await {
                return Err(fail(&uploads, ApiError::Internal(format!("writing upload: {e}"))));
            }
        }
        if let Err(e) = file.flush().await {
            return Err(fail(&uploads, ApiError::Internal(format!("writing upload: {e}"))));
        }
        let last = uploads.last_mut().expect("pushed above");
        last.hash = hex::encode(hasher.finalize());
        last.size = size;
    }
    if uploads.is_empty() {
        return Err(ApiError::bad_request("no_files", "send one or more multipart parts named \"file\""));
    }
    Ok(uploads)
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents", tag = "documents", params(("name" = String, Path)), request_body(content = UploadForm, content_type = "multipart/form-data"), responses((status = 202, description = "Queued for ingestion", body = Accepted), (status = 413, description = "Larger than the upload limit", body = ErrorBody), ErrorResponses))]
#[post("/v1/collections/{name}/documents")]
pub async fn upload(
    state: web::Data<State>,
    caller: Caller,
    name: web::Path<String>,
    req: HttpRequest,
    payload: Multipart,
) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Write)?;
    // Refused before a byte of the body is read: a client declaring 50 GiB gets its answer
    // at once instead of holding the request open.
    let max_request = state.config().max_request_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_request) {
        return Err(ApiError::TooLarge { limit: max_request });
    }
    let c = state.engine().collection(&name).await?;
    let uploads = receive(&state, payload).await?;
    let mut out = Vec::with_capacity(uploads.len());
    for u in uploads {
        // Every file becomes a job, even an empty one: its failure is recorded on the document.
        let registered =
            state.ingestor().register(&c, &u.filename, &u.hash, u.size as usize, DocumentStatus::Queued, None).await?;
        match registered {
            Registered::New(doc) => {
                let dest = state.config().upload_dir().join(format!("doc-{}", doc.id));
                tokio::fs::rename(&u.path, &dest)
                    .await
                    .map_err(|e| ApiError::Internal(format!("storing upload: {e}")))?;
                let store = state.engine().store();
                store.set_document_source(doc.id, Some(&dest.to_string_lossy())).await?;
                let job = store.create_job(doc.id).await?;
                state.jobs().notify();
                let status = DocumentStatus::Queued.as_str().to_owned();
                out.push(AcceptedDocument {
                    id: doc.id,
                    filename: doc.filename,
                    job_id: Some(job.id),
                    status,
                    duplicate: None,
                });
            }
            Registered::Duplicate(existing) => {
                let _ = tokio::fs::remove_file(&u.path).await;
                let job = state.engine().store().latest_job(existing.id).await?;
                out.push(AcceptedDocument {
                    id: existing.id,
                    filename: existing.filename,
                    job_id: job.map(|j| j.id),
                    status: existing.status.as_str().to_owned(),
                    duplicate: Some(true),
                });
            }
        }
    }
    Ok(HttpResponse::Accepted().json(Accepted { documents: out }))
}

#[utoipa::path(get, path = "/v1/collections/{name}/documents", tag = "documents", params(("name" = String, Path)), responses((status = 200, body = DocumentList), ErrorResponses))]
#[get("/v1/collections/{name}/documents")]
pub async fn list(state: web::Data<State>, caller: Caller, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    caller.require(&name, Access::Read)?;
    let c = state.engine().store().require_collection(&name).await?;
    let docs = state.engine().store().documents(c.id).await?;
    Ok(HttpResponse::Ok().json(DocumentList { documents: docs.into_iter().map(DocumentInfo::from).collect() }))
}

#[utoipa::path(delete, path = "/v1/collections/{name}/documents/{id}", tag = "documents", params(("name" = String, Path), ("id" = i64, Path)), responses((status = 204, description = "Deleted; its chunks left both indexes"), ErrorResponses))]
#[delete("/v1/collections/{name}/documents/{id}")]
pub async fn remove(
    state: web::Data<State>,
    caller: Caller,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    caller.require(&name, Access::Write)?;
    let c = state.engine().store().require_collection(&name).await?;
    match state.engine().store().document(id).await? {
        Some(d) if d.collection_id == c.id => {
            state.engine().delete_document(&c, id).await?;
            if let Some(p) = d.source_path {
                let _ = tokio::fs::remove_file(p).await;
            }
            Ok(HttpResponse::NoContent().finish())
        }
        _ => Err(ApiError::NotFound(format!("document not found: {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize_filename;

    #[test]
    fn path_tricks_are_removed() {
        assert_eq!(sanitize_filename("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(sanitize_filename("..\\..\\boot.ini").as_deref(), Some("boot.ini"));
        assert_eq!(sanitize_filename("/abs/path/report.pdf").as_deref(), Some("report.pdf"));
        assert_eq!(sanitize_filename(".hidden").as_deref(), Some("hidden"));
        assert_eq!(sanitize_filename("..").as_deref(), None);
        assert_eq!(sanitize_filename("a\u{0}b\nc.txt").as_deref(), Some("abc.txt"));
    }
}
