//! Wiring: binds both listeners, builds per-worker clients, runs until a
//! stop signal and drains.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use arc_swap::ArcSwap;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::{Settings, StoreBackend, UpstreamSettings};
use crate::dedup::persist::{self, Restored, StateFile};
use crate::dedup::{Dedup, Lifetimes};
use crate::http::AppFactory;
use crate::http::context::request_context;
use crate::http::gate;
use crate::http::listener::{self, ConnectionLimits};
use crate::http::routes;
use crate::http::routes::admin::{AdminAccess, AdminState};
use crate::http::state::{AppState, Readiness, StoreHealth};
use crate::jobs;
use crate::observe::audit::AuditLog;
use crate::observe::logging::LevelHandle;
use crate::observe::metrics::Metrics;
use crate::observe::record::Observer;
use crate::pause::{self, Pause};
use crate::quota::Quotas;
use crate::reload::{Loader, Reloader};
use crate::retrieval::Retrieval;
use crate::store::StoreError;
use crate::store::redis::{Redis, check_eviction_policy};
use crate::upstream::breaker::Breaker;
use crate::upstream::{MpcClient, tls_config};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, oneshot};

/// Longest a client may take to send a request head, on every request of a
/// connection (slow-loris guard; see src/http/listener.rs).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle keep-alive connection is kept open.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

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
    /// The open-file limit leaves no room for public connections.
    #[error(
        "the open-file limit ({limit}) leaves no room for public connections \
         (server.max_connections) beside the {reserved} kept for the rest; raise it"
    )]
    FileLimit {
        /// The soft limit in force, already raised to the hard limit.
        limit: u64,
        /// Descriptors kept free for everything but public connections.
        reserved: u64,
    },
    /// The stop and reload signals cannot be listened to.
    #[error("cannot listen for SIGTERM, SIGINT and SIGHUP: {0}")]
    Signals(std::io::Error),
    /// The shared store's address cannot be used.
    #[error("cannot use the shared store (store.redis_url): {0}")]
    Store(#[from] StoreError),
    /// The metrics could not be registered (a programming error).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The state file cannot be used: unwritable, held by another gateway,
    /// or unreadable and impossible to keep aside.
    #[error("cannot use the state file (dedup.state_file): {0}")]
    StateFile(#[from] persist::OpenError),
}

/// Why a gateway that started did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A server failed.
    #[error("server failed: {0}")]
    Server(#[from] std::io::Error),
    /// The last write of the state file failed: outcomes since the last good write are lost.
    #[error(
        "cannot write the state file {} (dedup.state_file) on stopping: {source}; \
         outcomes remembered since its last write are lost",
        path.display()
    )]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// What both listeners share, built once from the settings; each worker
/// builds its apps from it.
#[derive(Clone)]
pub struct Gateway {
    state: web::Data<AppState>,
    store: web::Data<StoreHealth>,
    readiness: web::Data<Readiness>,
    metrics: web::Data<Metrics>,
    audit: web::Data<AuditLog>,
    admin: web::Data<AdminState>,
    pause: web::Data<Pause>,
    upstream: UpstreamSettings,
    tls: Arc<rustls::ClientConfig>,
}

impl Gateway {
    /// Builds the shared state: limiters on `clock` (the shared ones in
    /// Redis on the server's clock), nothing remembered yet.
    pub fn new(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        Self::with_clocks(settings, clock, SharedTime::Server)
    }

    /// Like [`Gateway::new`], with the shared limits on `clock` too (tests).
    pub fn on_clock(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        Self::with_clocks(settings, clock, SharedTime::Clock)
    }

    fn with_clocks(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        shared_time: SharedTime,
    ) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new(&routes::TEMPLATES, routes::UNMATCHED)?);
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
        let shared = SharedState::open(settings, &metrics, &clock, shared_time)?;
        let dedup = Arc::clone(&shared.dedup);
        let access = AdminAccess::from_settings(&settings.admin);
        if access == AdminAccess::Closed {
            tracing::warn!(
                listen = %settings.admin.listen,
                "admin.listen is not a loopback address and admin.token_sha256 is not set: \
                 the /admin/ routes answer 403 to everyone (/metrics, /healthz and /readyz \
                 stay open); set admin.token_sha256 to use them"
            );
        }
        let admin = AdminState {
            dedup: Arc::clone(&dedup),
            access,
        };
        let audit = Arc::new(audit);
        let quotas = Arc::clone(&shared.quotas);
        let breaker = Breaker::new(
            Arc::clone(&clock),
            settings.upstream.breaker_failures.get(),
            settings.upstream.breaker_open_for,
        );
        let pause = Arc::clone(&shared.pause);
        let retrieval = Retrieval {
            dedup: Arc::clone(&dedup),
            breaker: Arc::clone(&breaker),
            pause: Arc::clone(&pause),
            quotas: Arc::clone(&quotas),
            slots: Arc::new(Semaphore::new(settings.upstream.max_concurrent.get())),
            slot_wait: settings.upstream.timeout,
            observer: Observer::new(Arc::clone(&metrics), Arc::clone(&audit), clock),
        };
        let state = AppState {
            max_body_bytes: settings.server.max_body_bytes.get(),
            max_batch_labels: settings.server.max_batch_labels.get(),
            public_origin: Some(
                settings
                    .server
                    .public_origin
                    .trim_end_matches('/')
                    .to_owned(),
            )
            .filter(|origin| !origin.is_empty()),
            authenticator: ArcSwap::from_pointee(Authenticator::new(
                &settings.auth,
                &settings.quota,
            )),
            quotas,
            dedup,
            metrics: Arc::clone(&metrics),
            breaker,
            retrieval,
        };
        Ok(Self {
            state: web::Data::new(state),
            store: web::Data::new(shared.health),
            readiness: web::Data::new(Readiness::default()),
            metrics: web::Data::from(metrics),
            audit: web::Data::from(audit),
            admin: web::Data::new(admin),
            pause: web::Data::from(pause),
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
            .app_data(self.store.clone())
            .app_data(self.admin.clone())
            .app_data(self.metrics.clone())
            .app_data(web::Data::from(Arc::clone(&self.state.dedup)))
            .app_data(web::Data::from(Arc::clone(&self.state.breaker)))
            .app_data(self.pause.clone())
            .configure(routes::admin)
            .default_service(web::to(routes::not_found))
    }
}

/// Remembered outcomes, claims, the shared limits and the MPC's pause,
/// where `store.backend` keeps them.
struct SharedState {
    dedup: Arc<Dedup>,
    quotas: Arc<Quotas>,
    pause: Arc<Pause>,
    health: StoreHealth,
}

/// What the limits and the pause kept in Redis step on: the server's
/// clock, so that replicas agree, or (tests) the gateway's injected clock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SharedTime {
    Server,
    Clock,
}

impl SharedState {
    fn open(
        settings: &Settings,
        metrics: &Metrics,
        clock: &Arc<dyn Clock>,
        shared_time: SharedTime,
    ) -> Result<Self, StartupError> {
        let clock = Arc::clone(clock);
        let budget = settings.upstream.max_per_minute;
        let lengths = pause::Lengths {
            default: settings.upstream.default_pause,
            max: settings.upstream.max_pause,
        };
        if settings.store.backend == StoreBackend::Memory {
            return Ok(Self {
                dedup: Dedup::new(&settings.dedup, Arc::clone(&clock)),
                pause: Arc::new(Pause::in_memory(Arc::clone(&clock), lengths)),
                quotas: Arc::new(Quotas::new(clock, budget)),
                health: StoreHealth::Memory,
            });
        }
        let redis = Redis::open(&settings.store, metrics.store_health())?;
        tracing::info!(
            redis_url = %settings.store.redis_url,
            key_prefix = %settings.store.key_prefix,
            "shared state (remembered outcomes, calls under way, upstream quotas, courtesy \
             budget, the MPC's pause) lives in Redis"
        );
        tokio::spawn({
            let redis = Arc::clone(&redis);
            async move { check_eviction_policy(&redis).await }
        });
        let lifetimes = Lifetimes::of_settings(&settings.dedup);
        let max_entries = settings.dedup.max_entries.get();
        // A call takes upstream.timeout at most, its claim and outcome a
        // few store commands: a call under way longer lost its holder.
        let call_deadline =
            settings.upstream.timeout + settings.store.timeout * 4 + Duration::from_secs(1);
        let store = crate::dedup::redis::RedisStore::start(
            Arc::clone(&redis),
            Arc::clone(&clock),
            max_entries,
            lifetimes.longest(),
            call_deadline,
        );
        let limits = |namespace| {
            let store = crate::quota::redis::RedisStore::new(Arc::clone(&redis), namespace);
            match shared_time {
                SharedTime::Server => store,
                SharedTime::Clock => store.on_clock(Arc::clone(&clock)),
            }
        };
        let (upstream, courtesy) = (limits("upstream"), limits("budget"));
        let paused = pause::redis::RedisStore::new(Arc::clone(&redis), Arc::clone(&clock));
        let paused = match shared_time {
            SharedTime::Server => paused,
            SharedTime::Clock => paused.on_clock(),
        };
        Ok(Self {
            pause: Arc::new(Pause::new(paused.start(), Arc::clone(&clock), lengths)),
            dedup: Dedup::with_store(store, lifetimes, max_entries, Arc::clone(&clock)),
            quotas: Arc::new(Quotas::with_stores(
                clock,
                Arc::new(upstream),
                Arc::new(courtesy),
                budget,
            )),
            health: StoreHealth::Redis(redis),
        })
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
    state_file: Option<StateFile>,
    drain_timeout: Duration,
    reloader: Option<Arc<Reloader>>,
    signals: Signals,
}

impl Application {
    /// Binds both listeners (port 0 picks a free port) and builds the servers.
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_on(settings, Arc::new(SystemClock), SharedTime::Server)
    }

    /// Like [`Application::build`], with the limiters on `clock`, the
    /// shared ones in Redis included (tests).
    pub fn build_with_clock(
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        Self::build_on(settings, clock, SharedTime::Clock)
    }

    fn build_on(
        settings: Settings,
        clock: Arc<dyn Clock>,
        shared_time: SharedTime,
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
        let signals = Signals::listen()?;
        let public_listener = bind("server.listen", settings.server.listen)?;
        let admin_listener = bind("admin.listen", settings.admin.listen)?;
        let public_addr = local_addr("server.listen", &public_listener)?;
        let admin_addr = local_addr("admin.listen", &admin_listener)?;

        let gateway = Gateway::with_clocks(&settings, clock, shared_time)?;
        let state_file = match (settings.dedup.state_file.get(), settings.store.backend) {
            (Some(path), StoreBackend::Memory) => Some(open_state_file(path, gateway.dedup())?),
            (Some(path), StoreBackend::Redis) => {
                tracing::warn!(
                    path = %path.display(),
                    "dedup.state_file is ignored with store.backend = \"redis\": remembered \
                     outcomes live in the shared store"
                );
                None
            }
            (None, _) => None,
        };
        let public_gateway = gateway.clone();
        let public =
            listener::public_server(public_listener, public_limits(&settings)?, move || {
                public_gateway.public_app()
            })
            .map_err(|source| StartupError::Bind {
                key: "server.listen",
                addr: public_addr,
                source,
            })?;

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
            reloader: None,
            signals,
        })
    }

    /// A reloader for this gateway, running on `settings`: `load` reads the
    /// configuration again, `level` changes the log level.
    pub fn reloader(
        &self,
        settings: Settings,
        load: Loader,
        level: Option<LevelHandle>,
    ) -> Arc<Reloader> {
        Arc::new(Reloader::new(load, level, settings, self.state.clone()))
    }

    /// Reloads the configuration with `reloader` on each SIGHUP while serving.
    pub fn reload_on_sighup(mut self, reloader: Arc<Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
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

    /// Serves until SIGTERM or SIGINT (or a [`Stopper`]), then drains, writes
    /// the state file and returns.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let stopper = self.stopper();
        let Signals {
            terminate,
            interrupt,
            hangup,
        } = self.signals;
        tokio::spawn(async move {
            jobs::stop_signal(terminate, interrupt).await;
            stopper.stop().await;
        });
        // Without a reloader SIGHUP is still caught, and ignored, never fatal.
        let reloading = self
            .reloader
            .map(|reloader| tokio::spawn(jobs::reload_on_hangup(reloader, hangup)));
        let housekeeping = tokio::spawn(jobs::drop_idle_users(Arc::clone(&self.state.quotas)));
        let (stop_saving, saving_stopped) = oneshot::channel();
        let saver = self.state_file.map(|state_file| {
            let path = state_file.path().to_owned();
            let dedup = Arc::clone(&self.state.dedup);
            let metrics = Arc::clone(&self.state.metrics);
            let job = jobs::keep_state_file(state_file, dedup, metrics, saving_stopped);
            (path, tokio::spawn(job))
        });
        let (public, admin) = tokio::join!(self.public, self.admin);
        housekeeping.abort();
        if let Some(reloading) = reloading {
            reloading.abort();
        }
        // After the servers: the calls in flight have settled and are written too.
        let _ = stop_saving.send(());
        let last_save = match saver {
            Some((path, saver)) => saver
                .await
                .unwrap_or_else(|error| Err(std::io::Error::other(error)))
                .map_err(|source| RunError::StateFile { path, source }),
            None => Ok(0),
        };
        public.and(admin)?;
        last_save?;
        Ok(())
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

/// Takes the state file for this gateway and loads what it remembers.
fn open_state_file(path: &Path, dedup: &Dedup) -> Result<StateFile, StartupError> {
    let state_file = StateFile::open(path)?;
    let shown = path.display();
    match state_file.restore(dedup, dedup.now())? {
        Restored::Loaded(loaded) => {
            tracing::info!(
                path = %shown,
                remembered = loaded.kept,
                expired = loaded.expired,
                over_bound = loaded.over_bound,
                malformed = loaded.malformed,
                "loaded remembered outcomes"
            );
            if let Some((entry, reason)) = &loaded.first_malformed {
                tracing::warn!(
                    path = %shown,
                    malformed = loaded.malformed,
                    first_entry = entry,
                    first_reason = %reason,
                    "skipped malformed entries of the state file"
                );
            }
            if loaded.over_bound > 0 {
                tracing::warn!(
                    path = %shown,
                    kept = loaded.kept,
                    dropped = loaded.over_bound,
                    "the state file holds more outcomes than dedup.max_entries: \
                     kept the most recent, the others may be forwarded again"
                );
            }
        }
        Restored::SetAside { error, aside } => tracing::warn!(
            path = %shown,
            kept_aside_as = %aside.display(),
            %error,
            "ignoring the state file: kept it aside, starting with nothing remembered"
        ),
    }
    Ok(state_file)
}

/// The public listener's limits; raises the open-file limit to fit them.
fn public_limits(settings: &Settings) -> Result<ConnectionLimits, StartupError> {
    let configured = settings.server.max_connections.get();
    let limit = listener::raise_open_files_limit();
    let max_connections =
        listener::connection_cap(configured, limit).ok_or(StartupError::FileLimit {
            limit: limit.unwrap_or_default(),
            reserved: listener::RESERVED_FILES,
        })?;
    if max_connections < configured {
        tracing::warn!(
            configured,
            lowered_to = max_connections,
            open_files_limit = limit,
            "server.max_connections does not fit under the open-file limit with room for \
             the admin listener and MPC calls: lowered; raise the hard limit (ulimit -Hn)"
        );
    }
    let workers = match settings.server.workers {
        // actix's own default, named here because the cap is split between workers.
        0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        workers => workers,
    };
    Ok(ConnectionLimits {
        head_timeout: CLIENT_REQUEST_TIMEOUT,
        keep_alive: KEEP_ALIVE,
        max_connections,
        workers,
        shutdown_timeout: shutdown_timeout(settings),
    })
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

/// The signals that stop or reload the gateway, listened to from the moment
/// it is built: one sent as soon as it says it serves must not meet the
/// default action (which kills the process, drain and state file unwritten).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn listen() -> Result<Self, StartupError> {
        let listen = |kind| signal(kind).map_err(StartupError::Signals);
        Ok(Self {
            terminate: listen(SignalKind::terminate())?,
            interrupt: listen(SignalKind::interrupt())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }
}
