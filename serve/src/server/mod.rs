//! The HTTP service: REST API over the engine, background ingest jobs.

pub mod auth;
pub mod error;
mod jobs;
mod observe;
pub mod openapi;
mod routes;
pub mod sources;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{middleware, web, App as HttpApp, HttpServer};
use anyhow::Context;
use kb_index::Engine;
use kb_ingest::pipeline::Ingestor;
use tokio::sync::Semaphore;

use crate::answer::Answerer;
use crate::app::App;
use crate::config::Config;
use jobs::JobQueue;

/// The largest JSON request body: questions, search queries and chat histories are far
/// smaller; uploads are multipart and limited by `max_upload_bytes` instead.
const JSON_BODY_LIMIT_BYTES: usize = 1 << 20;

/// What every request handler sees.
pub struct State {
    app: App,
    answerer: Answerer,
    jobs: Arc<JobQueue>,
    ready: AtomicBool,
    answer_slots: Arc<Semaphore>,
    sources: Arc<sources::Sources>,
}

impl State {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.app.engine
    }
    pub fn ingestor(&self) -> &Arc<Ingestor> {
        &self.app.ingestor
    }
    pub fn config(&self) -> &Config {
        &self.app.config
    }
    pub fn answerer(&self) -> &Answerer {
        &self.answerer
    }
    pub fn jobs(&self) -> &JobQueue {
        &self.jobs
    }
    pub fn answer_slots(&self) -> Arc<Semaphore> {
        self.answer_slots.clone()
    }
    pub fn sources(&self) -> &sources::Sources {
        &self.sources
    }
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    /// Whether `/readyz` says the service takes requests (`kb serve`: once it listens).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Registers every route.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(routes::health::healthz)
        .service(routes::health::readyz)
        .service(routes::health::metrics)
        .service(openapi::document)
        .service(routes::collections::create)
        .service(routes::collections::list)
        .service(routes::collections::remove)
        .service(routes::documents::upload)
        .service(routes::documents::list)
        .service(routes::documents::remove)
        .service(routes::jobs::get)
        .service(routes::search::search)
        .service(routes::ask::ask)
        .service(routes::chat::completions)
        .service(routes::sources::list)
        .service(routes::feedback::create)
        // Last: it answers every path the API does not.
        .service(routes::ui::asset);
}

/// The HTTP application over `state`: every route, the JSON limits and error shape, request
/// ids and metrics. `kb serve` runs one per worker thread; tests call it in-process
/// (`actix_web::test::init_service`).
pub fn app(
    state: web::Data<State>,
) -> HttpApp<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    HttpApp::new()
        .app_data(state)
        .app_data(web::JsonConfig::default().limit(JSON_BODY_LIMIT_BYTES).error_handler(error::json_error))
        .wrap(middleware::from_fn(observe::observe))
        .configure(routes)
}

/// The service's state over `config`, with `kb_executable` (a `kb` binary) as the PDF worker:
/// the parts, the answer generator, and the background tasks (ingest job queue, index upkeep,
/// folder sources) spawned on the current tokio runtime. Not ready until
/// [`State::set_ready`]. What `kb serve` runs, minus the listening socket: for in-process tests.
pub async fn state(config: Config, kb_executable: PathBuf) -> anyhow::Result<web::Data<State>> {
    start(App::open_with_pdf_worker(config, kb_executable).await?).await
}

/// Loads the generator and starts the background tasks over `app`.
async fn start(app: App) -> anyhow::Result<web::Data<State>> {
    let generator = app.load_generator().await?;
    let answerer =
        Answerer::new(app.engine.clone(), generator, app.config.answer_max_tokens, app.config.answer_min_relevance);
    app.ingestor.yield_to_queries();
    let jobs = JobQueue::new(app.config.ingest_workers, app.config.ingest_batch);
    tokio::spawn(jobs.clone().run(app.ingestor.clone()));
    // Index upkeep: scheduled saves of the vector graphs, repairs after a failed update.
    let engine = app.engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            engine.maintain().await;
        }
    });
    let source_state = Arc::new(sources::Sources::default());
    sources::spawn(&app.config.sources, app.ingestor.clone(), source_state.clone());
    Ok(web::Data::new(State {
        answer_slots: Arc::new(Semaphore::new(app.config.max_pending_answers.max(1))),
        app,
        answerer,
        jobs,
        ready: AtomicBool::new(false),
        sources: source_state,
    }))
}

/// `kb serve`: the service on `config.addr` until SIGINT or SIGTERM, then a graceful stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!("configuration:\n{}", config.describe());
    let addr = config.addr;
    let app = App::open(config).await?;
    if !addr.ip().is_loopback() && !app.engine.store().has_api_keys().await? {
        anyhow::bail!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could read and change every collection. \
             Create one with `kb keys create NAME --admin`, or listen on loopback (127.0.0.1)"
        );
    }
    let state = start(app).await?;
    let data = state.clone();
    let server =
        HttpServer::new(move || self::app(data.clone())).bind(addr).with_context(|| format!("binding {addr}"))?;
    for a in server.addrs() {
        // Tests and scripts read this line to find an ephemeral port.
        println!("kb listening on http://{a}");
    }
    state.set_ready(true);
    // Stops on SIGINT/SIGTERM after in-flight requests finish.
    server.run().await?;
    state.set_ready(false);
    state.jobs.shutdown(state.engine().store(), Duration::from_secs(state.config().shutdown_grace_secs)).await;
    state.engine().flush_all().await?;
    Ok(())
}
