//! Entry point: parse arguments, set up logging and signals, run the command, map exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::sync::{mpsc, watch};
use tracing_subscriber::EnvFilter;

use gitopsd::cli::{Cli, ColourChoice, Command, DiffFormat, InitArgs, InitTargetArg, LogFormat};
use gitopsd::commands::{self, ControlAction, DiffOutput, DiffRequest, EXIT_ERROR};
use gitopsd::config::Config;
use gitopsd::daemon::Signals;
use gitopsd::init::{InitRequest, InitTarget};
use gitopsd::report::Colour;

/// The global allocator: jemalloc, not glibc's malloc, whose per-thread free lists and
/// fragments kept an idle daemon at several times its live heap (the README's fleet
/// section, issue 20). The feature `system-allocator` keeps glibc's, for heap profilers that
/// hook `malloc` (heaptrack).
#[cfg(not(feature = "system-allocator"))]
mod allocator {
    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment
    /// overrides them): a background thread returns freed pages to the system a second after
    /// they were freed; one arena and no per-thread caches, so that freed objects do not stay
    /// spread over pages that cannot be returned (measured on the fleet benchmark).
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static OPTIONS: Options = Options(
        c"background_thread:true,narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0"
            .as_ptr(),
    );

    /// A C string pointer, which is what jemalloc reads at `malloc_conf`.
    #[repr(transparent)]
    struct Options(*const std::ffi::c_char);

    // SAFETY: the pointer is to a static string, never written.
    unsafe impl Sync for Options {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("GITOPSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    // One TLS provider for the whole process (gix's https transport uses rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(dispatch(cli));
    // A worker thread can still be stuck in a fetch whose remote never answered (it was given
    // up on): do not wait for it on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Runs the subcommand.
async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    let path = cli.config.as_path();
    match cli.command {
        Command::Validate {
            config_only: true, ..
        } => Ok(gitopsd::validate::validate_config(path, &mut stdout)?),
        Command::Validate { rev, server, .. } => {
            Ok(gitopsd::validate::validate(path, rev.as_deref(), server, &mut stdout).await?)
        }
        Command::Init(args) => {
            let request = init_request(args);
            Ok(gitopsd::init::init(path, &request, &mut stdout).await?)
        }
        Command::Run { once } => {
            let config = load(path).await?;
            let signals = signals()?;
            Ok(commands::run(path, config, once, signals).await)
        }
        Command::Diff {
            env,
            rev,
            against,
            output,
            max_bytes,
            color,
        } => {
            let config = load(path).await?;
            let request = DiffRequest {
                only: env.as_deref(),
                rev: rev.as_deref(),
                against: &against,
                output: diff_output(output, max_bytes, color),
            };
            Ok(commands::diff(&config, &request, &mut stdout).await?)
        }
        Command::Approve { env, revision } => {
            let action = ControlAction::Approve(revision);
            control(path, &env, action, &mut stdout).await
        }
        Command::Pause { env } => control(path, &env, ControlAction::Pause, &mut stdout).await,
        Command::Retry { env } => control(path, &env, ControlAction::Retry, &mut stdout).await,
        Command::Resume { env } => control(path, &env, ControlAction::Resume, &mut stdout).await,
        Command::Rollback { env, to } => {
            control(path, &env, ControlAction::Rollback(to), &mut stdout).await
        }
        Command::Status { env } => {
            let config = load(path).await?;
            Ok(commands::status(&config, env.as_deref(), &mut stdout).await?)
        }
        Command::History { env, stats } => {
            let config = load(path).await?;
            Ok(commands::history(
                &config,
                env.as_deref(),
                stats,
                &mut stdout,
            )?)
        }
    }
}

/// What `gitopsd init` was asked for.
fn init_request(args: InitArgs) -> InitRequest {
    let InitArgs {
        repo,
        branch,
        path,
        target,
        name,
        namespace,
        kubeconfig,
        live,
    } = args;
    InitRequest {
        repo,
        branch,
        path,
        target: match target {
            InitTargetArg::Kubernetes => InitTarget::Kubernetes,
            InitTargetArg::Directory => InitTarget::Directory,
        },
        name,
        namespace,
        kubeconfig,
        live,
    }
}

/// Reads and checks the config file, off the async workers.
async fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let path = path.to_path_buf();
    Ok(gitopsd::blocking::off_thread("reading the config", move || Config::load(&path)).await??)
}

/// How `diff` writes: text (coloured on a terminal unless told otherwise), markdown or JSON.
fn diff_output(format: DiffFormat, max_bytes: usize, color: ColourChoice) -> DiffOutput {
    let colour = match color {
        ColourChoice::Always => Colour::Ansi,
        ColourChoice::Never => Colour::Never,
        ColourChoice::Auto if std::io::stdout().is_terminal() => Colour::Ansi,
        ColourChoice::Auto => Colour::Never,
    };
    match format {
        DiffFormat::Text => DiffOutput::Text(colour),
        DiffFormat::Markdown => DiffOutput::Markdown { max_bytes },
        DiffFormat::Json => DiffOutput::Json,
    }
}

/// Sends one control action to the running daemon.
async fn control(
    config_path: &std::path::Path,
    environment: &str,
    action: commands::ControlAction,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u8> {
    let config = load(config_path).await?;
    Ok(commands::control(&config, environment, action, out).await?)
}

/// SIGTERM and ctrl-c turn `shutdown` true; each SIGHUP asks for a config reload.
fn signals() -> anyhow::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let (sender, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
        let _ = sender.send(true);
    });
    let (reload_sender, reload) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            let _ = reload_sender.try_send(());
        }
    });
    Ok(Signals { shutdown, reload })
}
