//! The smartproxy binary: command line, configuration file, logs, signals.
//!
//! Exit codes: 0 success, 1 invalid configuration or failure to start, 64 usage error.
//!
//! Nothing the process writes may stop it: messages go through [`logs`], which drops (and
//! counts) what stdout or stderr cannot take; `print!`-style macros, which panic on a write
//! error, are denied.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod alloc;
mod cli;
mod completions;
mod control;
mod logs;
mod report;
mod systemd;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use smartproxy_engine::{Config, Engine, Format, Runtime};

use crate::cli::{Cli, Command, DEMO};
use crate::control::Control;

/// glibc's `malloc`, with cache-line-aligned blocks (tokio's tasks and socket states) made
/// without `posix_memalign`: see [`alloc`].
#[global_allocator]
static GLOBAL: alloc::Alloc = alloc::Alloc;

/// Usage error (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    let (config, file) = match &cli.command {
        Some(Command::Validate { config }) => return validate(config),
        Some(Command::Completions { shell }) => return completions::print_completions(*shell),
        Some(Command::Man) => return completions::print_man(),
        Some(Command::Run { config }) => match Config::load(config) {
            Ok(c) => (c, Some(config.clone())),
            Err(e) => {
                logs::say(format_args!("{e}"));
                return ExitCode::FAILURE;
            }
        },
        None => match Config::from_str(DEMO, Format::Toml) {
            Ok(c) => (c, None),
            Err(e) => {
                logs::say(format_args!("embedded demo configuration: {e}"));
                return ExitCode::FAILURE;
            }
        },
    };
    if let Err(e) = logs::init(cli.log_format, cli.log_level.as_deref()) {
        logs::say(format_args!("smartproxy: {e}"));
        return ExitCode::from(EX_USAGE);
    }
    if config.routes().is_empty() {
        tracing::warn!("the configuration has no routes: nothing will listen but the admin API");
    }
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // Per-worker: each worker thread runs its own current-thread runtime and accepts on its own
    // SO_REUSEPORT listeners; the main thread's runtime keeps the signals, admin API and
    // sampler.
    let per_worker = config.runtime == Runtime::PerWorker && workers > 1;
    let pool = if per_worker {
        match Workers::start(workers) {
            Ok(p) => Some(p),
            Err(e) => {
                logs::say(format_args!("cannot start the worker runtimes: {e}"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // One worker: a current-thread runtime (no work-stealing scheduler, no cross-thread wake-ups,
    // everything on the main thread); measured cheaper per request and per connection.
    let mut builder = if workers <= 1 || per_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers).thread_name("smartproxy-worker");
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            logs::say(format_args!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let handles = pool.as_ref().map(|p| p.handles.clone()).unwrap_or_default();
    let result = runtime.block_on(run(config, file, handles));
    // STOPPING=1 (and anything else posted) reaches the service manager before the exit.
    systemd::flush(std::time::Duration::from_secs(1));
    if let Some(pool) = pool {
        pool.stop();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (the log subscriber writes there too: not both).
            logs::say(format_args!("smartproxy: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The worker threads of `runtime = "per-worker"`, each running a current-thread runtime.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let tx = tx.clone();
            let mut stopped = stopped.clone();
            let t = std::thread::Builder::new().name(format!("smartproxy-worker-{i}")).spawn(
                move || {
                    let rt =
                        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                            Ok(rt) => rt,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|v| *v).await;
                    });
                },
            )?;
            threads.push(t);
        }
        drop(tx);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            // A thread that ends before sending drops its sender: recv fails once all did.
            match rx.recv() {
                Ok(r) => handles.push(r?),
                Err(_) => return Err(std::io::Error::other("a worker thread exited at start")),
            }
        }
        Ok(Self { handles, stop, threads })
    }

    /// Ends the worker runtimes (their remaining tasks are dropped) and joins the threads.
    fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            if c.routes().is_empty() {
                logs::say(format_args!(
                    "warning: {}: no routes: `run` would listen on nothing but the admin API",
                    path.display()
                ));
            } else {
                // The timeouts each route's connections get, then OK.
                logs::out(format_args!("{}", report::timeouts_table(&c).trim_end()));
            }
            logs::out(format_args!("OK"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            logs::say(format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    file: Option<PathBuf>,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    let watch_config = config.watch_config;
    let engine = Engine::builder().config(config).runtimes(workers).start().await?;
    let control = Control::new(engine.clone(), file);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = async {
        let admin = control::start_admin(&control, &stop).await?;
        control::start_statsd(&engine, &stop)?;
        // Handlers first, so that a signal sent as soon as the listeners are printed is not
        // lost (the default action of SIGTERM would kill the process without draining).
        let signals = Signals::install()?;
        match (&control.file, watch_config) {
            (Some(path), true) => watch::start(control.clone(), path, &stop)?,
            (None, true) => {
                tracing::warn!("watch_config: the demo configuration has no file to watch")
            }
            _ => {}
        }
        anyhow::Ok((admin, signals))
    };
    let (admin, mut signals) = match started.await {
        Ok(s) => s,
        Err(e) => {
            // Stop what did start, the kernel forwarding rules included, before failing.
            engine.shutdown(std::time::Duration::ZERO).await;
            return Err(e);
        }
    };
    // The command's output; a closed stdout does not stop the proxy (counted, see `logs`).
    for addr in engine.local_addrs() {
        logs::out(format_args!("listening on {addr}"));
    }
    if let Some(addr) = admin {
        logs::out(format_args!(
            "admin API listening on http://{addr}/ (dashboard: /, metrics: /metrics, /metrics/json)"
        ));
    }
    // Every listener is bound (routes and admin): tell systemd.
    systemd::ready("serving");
    systemd::spawn_watchdog(&stop);
    signals.wait(&control).await;
    systemd::stopping();
    let grace = engine.config().defaults.shutdown_grace;
    let summary = {
        let drain = engine.shutdown(grace);
        tokio::pin!(drain);
        tokio::select! {
            s = &mut drain => s,
            sig = signals.stop() => {
                // A second SIGTERM / SIGINT ends the drain at once (as nginx's and Envoy's do).
                tracing::warn!(signal = sig, "second signal during the drain: closing every connection now");
                engine.end_drain_now();
                drain.await
            }
        }
    };
    let _ = stop_tx.send(true);
    tracing::info!(forced = summary.forced, log_lines_dropped = logs::dropped(), "stopped");
    Ok(())
}

/// The signals the process answers: SIGTERM and SIGINT stop, SIGHUP reloads.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
    async fn wait(&mut self, control: &Control) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    return;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    return;
                }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP");
                    // `Control::reload` logs and counts the outcome.
                    let _ = control.reload("SIGHUP").await;
                }
            }
        }
    }

    /// The next SIGTERM or SIGINT (SIGHUP is ignored while shutting down); its name.
    async fn stop(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => tracing::info!("SIGHUP ignored: shutting down"),
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn wait(&mut self, _control: &Control) {
        let _ = tokio::signal::ctrl_c().await;
    }

    async fn stop(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
