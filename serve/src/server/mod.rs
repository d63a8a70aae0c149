//! The HTTP service: REST API over the engine, background ingest jobs.

pub mod auth;
pub mod error;
mod jobs;
mod observe;
pub mod openapi;
mod routes;
pub mod sources;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
}

/// Registers every route; shared by `kb serve` and the tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
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

pub async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!("configuration:\n{}", config.describe());
    let addr = config.addr;
    let workers = config.ingest_workers;
    let app = App::open(config).await?;
    if !addr.ip().is_loopback() && !app.engine.store().has_api_keys().await? {
        anyhow::bail!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could read and change every collection. \
             Create one with `kb keys create NAME --admin`, or listen on loopback (127.0.0.1)"
        );
    }
    let generator = app.load_generator().await?;
    let answerer =
        Answerer::new(app.engine.clone(), generator, app.config.answer_max_tokens, app.config.answer_min_relevance);
    app.ingestor.yield_to_queries();
    let jobs = JobQueue::new(workers, app.config.ingest_batch);
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
    let state = web::Data::new(State {
        answer_slots: Arc::new(Semaphore::new(app.config.max_pending_answers.max(1))),
        app,
        answerer,
        jobs,
        ready: AtomicBool::new(false),
        sources: source_state,
    });
    let data = state.clone();
    let server = HttpServer::new(move || {
        HttpApp::new()
            .app_data(data.clone())
            .app_data(web::JsonConfig::default().limit(JSON_BODY_LIMIT_BYTES).error_handler(error::json_error))
            .wrap(middleware::from_fn(observe::observe))
            .configure(routes)
    })
    .bind(addr)
    .with_context(|| format!("binding {addr}"))?;
    for a in server.addrs() {
        // Tests and scripts read this line to find an ephemeral port.
        println!("kb listening on http://{a}");
    }
    state.ready.store(true, Ordering::Release);
    // Stops on SIGINT/SIGTERM after in-flight requests finish.
    server.run().await?;
    state.ready.store(false, Ordering::Release);
    state.jobs.shutdown(state.engine().store(), Duration::from_secs(state.config().shutdown_grace_secs)).await;
    state.engine().flush_all().await?;
    Ok(())
}
