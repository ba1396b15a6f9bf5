//! Wiring: binds both listeners, builds per-worker clients, runs until a
//! stop signal and drains.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use actix_web::body::BoxBody;
use actix_web::dev::{Server, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::clock::{Clock, MonotonicClock};
use crate::config::{Settings, UpstreamSettings};
use crate::dedup::{Dedup, persist};
use crate::gate;
use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::quota::Quotas;
use crate::routes;
use crate::routes::admin::AdminState;
use crate::telemetry::request_context;
use crate::upstream::breaker::Breaker;
use crate::upstream::{MpcClient, tls_config};
use tokio::sync::Semaphore;

/// Longest a client may take to send its request head (slow-loris guard).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle keep-alive connection is kept open.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How often idle users' limiter state is dropped.
const QUOTA_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// How often remembered outcomes are written to the state file (when changed).
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// State shared by every worker of the public listener.
pub struct AppState {
    /// Cap on request bodies, from `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// Resolves callers to users and tiers.
    pub authenticator: Authenticator,
    /// Per-user limits and the courtesy budget.
    pub quotas: Quotas,
    /// Remembered outcomes and calls in flight.
    pub dedup: Arc<Dedup>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Stops calling a failing MPC.
    pub breaker: Arc<Breaker>,
    /// One permit per MPC call allowed under way (`upstream.max_concurrent`).
    pub mpc_slots: Arc<Semaphore>,
    /// Longest wait for the MPC, a free call slot included.
    pub upstream_timeout: Duration,
}

/// Whether the gateway is still taking work; flips once, at shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
    active: AtomicUsize,
}

/// A request being served; counted until dropped.
pub struct Active<'a>(&'a Readiness);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Readiness {
    /// Counts a request as being served until the guard is dropped.
    pub fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self)
    }

    /// Requests being served right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Marks the start of shutdown; `/readyz` turns 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The settings key naming the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The audit file cannot be opened for appending.
    #[error("cannot open the audit file {path} (log.audit_file): {source}")]
    AuditFile {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The metrics could not be registered (a programming error).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The service an [`App`] of either listener builds.
pub trait AppFactory:
    ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >
{
}

impl<T> AppFactory for T where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        >
{
}

/// What both listeners share, built once from the settings; each worker
/// builds its apps from it.
#[derive(Clone)]
pub struct Gateway {
    state: web::Data<AppState>,
    readiness: web::Data<Readiness>,
    metrics: web::Data<Metrics>,
    audit: web::Data<AuditLog>,
    admin: web::Data<AdminState>,
    upstream: UpstreamSettings,
    tls: Arc<rustls::ClientConfig>,
}

impl Gateway {
    /// Builds the shared state: limiters on `clock`, nothing remembered yet.
    pub fn new(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new()?);
        let audit_path = settings.log.audit_file.get();
        let audit = AuditLog::open(
            audit_path,
            metrics.audit_write_failures(),
            Arc::clone(&clock),
        )
        .map_err(|source| StartupError::AuditFile {
            path: audit_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        })?
        .simulated(settings.upstream.simulated);
        let dedup = Dedup::new(&settings.dedup);
        let admin = AdminState {
            dedup: Arc::clone(&dedup),
            token: settings.admin.token_sha256.get().copied(),
        };
        let state = AppState {
            max_body_bytes: settings.server.max_body_bytes.get(),
            authenticator: Authenticator::new(&settings.auth, &settings.quota),
            quotas: Quotas::new(clock.clone(), settings.upstream.max_per_minute),
            dedup,
            metrics: Arc::clone(&metrics),
            breaker: Breaker::new(
                clock,
                settings.upstream.breaker_failures.get(),
                settings.upstream.breaker_open_for,
            ),
            mpc_slots: Arc::new(Semaphore::new(settings.upstream.max_concurrent.get())),
            upstream_timeout: settings.upstream.timeout,
        };
        Ok(Self {
            state: web::Data::new(state),
            readiness: web::Data::new(Readiness::default()),
            metrics: web::Data::from(metrics),
            audit: web::Data::new(audit),
            admin: web::Data::new(admin),
            upstream: settings.upstream.clone(),
            tls: tls_config(),
        })
    }

    /// Remembered outcomes and calls in flight.
    pub fn dedup(&self) -> &Arc<Dedup> {
        &self.state.dedup
    }

    /// The public API for one worker, with its own MPC client.
    pub fn public_app(&self) -> App<impl AppFactory + use<>> {
        // awc clients are not Send: one per worker thread.
        let mpc = MpcClient::new(
            &self.upstream,
            Arc::clone(&self.tls),
            self.metrics.clone().into_inner(),
        );
        App::new()
            .wrap(from_fn(gate::admit))
            .wrap(from_fn(request_context))
            .app_data(self.state.clone())
            .app_data(self.readiness.clone())
            .app_data(self.metrics.clone())
            .app_data(self.audit.clone())
            .app_data(web::Data::new(mpc))
            .configure(routes::public)
            .default_service(web::to(routes::not_found))
    }

    /// The admin API (probes, metrics, remembered outcomes).
    pub fn admin_app(&self) -> App<impl AppFactory + use<>> {
        App::new()
            .wrap(from_fn(request_context))
            .app_data(self.readiness.clone())
            .app_data(self.admin.clone())
            .app_data(self.metrics.clone())
            .app_data(web::Data::from(Arc::clone(&self.state.dedup)))
            .app_data(web::Data::from(Arc::clone(&self.state.breaker)))
            .configure(routes::admin)
            .default_service(web::to(routes::not_found))
    }
}

/// A bound, not yet running gateway: the public and admin servers.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    public: Server,
    admin: Server,
    readiness: web::Data<Readiness>,
    state: web::Data<AppState>,
    state_file: Option<std::path::PathBuf>,
    drain_timeout: Duration,
}

impl Application {
    /// Binds both listeners (port 0 picks a free port) and builds the servers.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(MonotonicClock::default()))
    }

    /// Like [`Application::build`], with the limiters on `clock`.
    pub fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        // The demo's simulated MPC sends no email: its start-up banner says who may ask.
        if settings.auth.allow_anonymous
            && !settings.listens_on_loopback()
            && !settings.upstream.simulated
        {
            tracing::warn!(
                listen = %settings.server.listen,
                "anonymous access is allowed on a non-loopback address: anyone who can \
                 reach it can make the MPC send emails; set auth.allow_anonymous = false"
            );
        }
        let public_listener = bind("server.listen", settings.server.listen)?;
        let admin_listener = bind("admin.listen", settings.admin.listen)?;
        let public_addr = local_addr("server.listen", &public_listener)?;
        let admin_addr = local_addr("admin.listen", &admin_listener)?;

        let gateway = Gateway::new(&settings, clock)?;
        let state_file = settings.dedup.state_file.get().map(ToOwned::to_owned);
        if let Some(path) = &state_file {
            match persist::load(path, &gateway.state.dedup) {
                Ok(count) => tracing::info!(
                    path = %path.display(),
                    remembered = count,
                    "loaded remembered outcomes"
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "ignoring the state file: starting with nothing remembered"
                ),
            }
        }
        let public_gateway = gateway.clone();
        let mut public = HttpServer::new(move || public_gateway.public_app())
            .disable_signals()
            .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
            .client_disconnect_timeout(Duration::from_secs(1))
            .keep_alive(KEEP_ALIVE)
            .shutdown_timeout(shutdown_timeout(&settings));
        if settings.server.workers > 0 {
            public = public.workers(settings.server.workers);
        }
        let public = public
            .listen(public_listener)
            .map_err(|source| StartupError::Bind {
                key: "server.listen",
                addr: public_addr,
                source,
            })?
            .run();

        let admin_gateway = gateway.clone();
        let admin = HttpServer::new(move || admin_gateway.admin_app())
            .workers(1)
            .disable_signals()
            .listen(admin_listener)
            .map_err(|source| StartupError::Bind {
                key: "admin.listen",
                addr: admin_addr,
                source,
            })?
            .run();

        Ok(Self {
            public_addr,
            admin_addr,
            public,
            admin,
            readiness: gateway.readiness,
            state: gateway.state,
            state_file,
            drain_timeout: settings.upstream.timeout + Duration::from_secs(2),
        })
    }

    /// Where the public API listens.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle that stops the gateway as a signal would.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            public: self.public.handle(),
            admin: self.admin.handle(),
            readiness: self.readiness.clone(),
            dedup: Arc::clone(&self.state.dedup),
            drain_timeout: self.drain_timeout,
        }
    }

    /// Serves until SIGTERM or SIGINT (or a [`Stopper`]), then drains and returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper();
        tokio::spawn(async move {
            shutdown_signal().await;
            stopper.stop().await;
        });
        let state = self.state.clone();
        let housekeeping = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(QUOTA_HOUSEKEEPING);
            loop {
                ticks.tick().await;
                let tracked = state.quotas.retain_recent();
                tracing::debug!(tracked_users = tracked, "dropped idle users' limiter state");
            }
        });
        let saver = self.state_file.clone().map(|path| {
            let dedup = Arc::clone(&self.state.dedup);
            tokio::spawn(save_periodically(path, dedup))
        });
        let (public, admin) = tokio::join!(self.public, self.admin);
        housekeeping.abort();
        if let Some(saver) = saver {
            saver.abort();
        }
        if let Some(path) = self.state_file {
            save(path, Arc::clone(&self.state.dedup)).await;
        }
        public.and(admin)
    }
}

/// Stops a running [`Application`] gracefully.
#[derive(Clone)]
pub struct Stopper {
    public: ServerHandle,
    admin: ServerHandle,
    readiness: web::Data<Readiness>,
    dedup: Arc<Dedup>,
    drain_timeout: Duration,
}

impl Stopper {
    /// Refuses new connections, lets MPC calls and requests in flight finish, then stops.
    pub async fn stop(&self) {
        tracing::info!("shutting down: finishing in-flight requests");
        self.readiness.begin_shutdown();
        self.public.pause().await;
        // MPC calls run on their own tasks, which die with the workers: let
        // them settle (their outcomes are then remembered and saved) and the
        // requests be answered, then close what is left (idle keep-alive
        // connections would otherwise hold a graceful stop to its timeout).
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while (self.dedup.in_flight() > 0 || self.readiness.active() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.public.stop(false).await;
        self.admin.stop(false).await;
        tracing::info!("stopped");
    }
}

async fn save_periodically(path: std::path::PathBuf, dedup: Arc<Dedup>) {
    let mut ticks = tokio::time::interval(SAVE_EVERY);
    let mut saved = dedup.changes();
    loop {
        ticks.tick().await;
        let changes = dedup.changes();
        if changes != saved {
            save(path.clone(), Arc::clone(&dedup)).await;
            saved = changes;
        }
    }
}

async fn save(path: std::path::PathBuf, dedup: Arc<Dedup>) {
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || persist::save(&path, &dedup)).await {
        Ok(Ok(count)) => tracing::debug!(path = %shown, remembered = count, "state file written"),
        Ok(Err(error)) => tracing::error!(path = %shown, %error, "cannot write the state file"),
        Err(error) => tracing::error!(path = %shown, %error, "state file writer failed"),
    }
}

/// Seconds a stopping worker waits for its requests: long enough for an MPC call.
fn shutdown_timeout(settings: &Settings) -> u64 {
    settings.upstream.timeout.as_secs() + 5
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartupError> {
    listener.local_addr().map_err(|source| StartupError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
