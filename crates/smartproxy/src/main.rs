//! The smartproxy binary: command line, configuration file, logs, signals.
//!
//! Exit codes: 0 success, 1 invalid configuration or failure to start, 64 usage error.

mod cli;
mod completions;
mod control;
mod report;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use smartproxy_engine::{Config, Engine, Format, Runtime};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, DEMO, LogFormat};
use crate::control::Control;

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
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => match Config::from_str(DEMO, Format::Toml) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("embedded demo configuration: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    init_logs(cli.log_format, cli.log_level.as_deref());
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
                eprintln!("cannot start the worker runtimes: {e}");
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
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handles = pool.as_ref().map(|p| p.handles.clone()).unwrap_or_default();
    let result = runtime.block_on(run(config, file, handles));
    if let Some(pool) = pool {
        pool.stop();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("smartproxy: {e:#}");
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
        Ok(config) => {
            #[allow(clippy::print_stdout)] // The command's output: the timeouts, then OK.
            {
                if !config.routes().is_empty() {
                    print!("{}", report::timeouts_table(&config));
                }
                println!("OK");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(
    config: Config,
    file: Option<PathBuf>,
    workers: Vec<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    let engine = Engine::builder().config(config).runtimes(workers).start().await?;
    let control = Control { engine: engine.clone(), file };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let admin = control::start_admin(&control, &stop).await?;
    control::start_statsd(&engine, &stop)?;
    // Handlers first, so that a signal sent as soon as the listeners are printed is not lost
    // (the default action of SIGTERM would kill the process without draining).
    let signals = Signals::install()?;
    {
        #[allow(clippy::print_stdout)] // The listeners are the command's output.
        let mut out = std::io::stdout().lock();
        for addr in engine.local_addrs() {
            writeln!(out, "listening on {addr}")?;
        }
        if let Some(addr) = admin {
            writeln!(
                out,
                "admin API listening on http://{addr}/ (metrics: /metrics, /metrics/json)"
            )?;
        }
        out.flush()?;
    }
    signals.wait(&control).await;
    let grace = engine.config().defaults.shutdown_grace;
    let summary = engine.shutdown(grace).await;
    let _ = stop_tx.send(true);
    tracing::info!(forced = summary.forced, "stopped");
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
    async fn wait(mut self, control: &Control) {
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
                    let _ = control.reload().await;
                }
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

    async fn wait(self, _control: &Control) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
