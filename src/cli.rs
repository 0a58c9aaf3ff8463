//! Command-line arguments (clap): what the user typed, checked for shape only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "gitopsd",
    version,
    about = "GitOps reconciler: git → plan → apply, one folder of manifests per environment"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "GITOPSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log format; `text` is coloured on a terminal.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitTargetArg {
    Kubernetes,
    Directory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColourChoice {
    /// When standard output is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconciler: poll the repository and keep every environment at its branch tip.
    Run {
        /// One pass over all environments, then exit (non-zero if any failed).
        #[arg(long)]
        once: bool,
    },
    /// Show what would change. Exit 0: no change, 1: changes, 2: error.
    Diff {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Desired revision (default: the configured branch's tip).
        #[arg(long)]
        rev: Option<String>,
        /// `live` compares with the target; a revision compares two revisions offline.
        #[arg(long, default_value = "live")]
        against: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        output: DiffFormat,
        /// Markdown only: leave out object diffs past this size (a pull-request comment holds
        /// at most 65536 characters).
        #[arg(long, default_value_t = 60_000)]
        max_bytes: usize,
        /// Text only: colour the diff.
        #[arg(long, value_enum, default_value_t = ColourChoice::Auto)]
        color: ColourChoice,
    },
    /// Check the configuration and every environment's manifests, reporting all problems.
    /// Exit 0: valid, 1: problems found, 2: could not check.
    Validate {
        /// Revision to check (default: the configured branch's tip).
        #[arg(long)]
        rev: Option<String>,
        /// Also dry-run every object on each environment's cluster (server-side apply with
        /// dryRun=All), so what only the API server knows is caught too.
        #[arg(long)]
        server: bool,
        /// Check the configuration file only: no fetch, no manifests.
        #[arg(long, conflicts_with_all = ["rev", "server"])]
        config_only: bool,
    },
    /// Write a starting config (to --config) for a repository and one environment, after
    /// fetching the branch tip and reading the environment's folder. Never overwrites a file.
    Init(InitArgs),
    /// Show each environment's current and last healthy revision, the rollout step in flight
    /// and failing checks.
    Status {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// Approve a revision in an environment with `approval = "manual"` (asks the running
    /// daemon through its API).
    Approve {
        #[arg(long)]
        env: String,
        /// The revision to approve (commit id or branch).
        revision: String,
    },
    /// Pause an environment: no new rollout starts, a rollout in flight holds at its step.
    Pause {
        #[arg(long)]
        env: String,
    },
    /// Clear the held failure of the branch tip, so the running daemon rolls it out again
    /// (after a fix outside git: a missing CRD installed, a quota raised).
    Retry {
        #[arg(long)]
        env: String,
    },
    /// Resume a paused environment, and lift a rollback pin.
    Resume {
        #[arg(long)]
        env: String,
    },
    /// Put an environment back to REV now and keep it there until the next commit or a resume.
    Rollback {
        #[arg(long)]
        env: String,
        #[arg(long)]
        to: String,
    },
    /// Print the journal.
    History {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Delivery figures instead: deployment frequency, lead time, change failure rate and
        /// mean time to restore.
        #[arg(long)]
        stats: bool,
    },
}

/// `gitopsd init`'s arguments.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The repository: a local path, file://, git://, https:// or ssh:// URL.
    #[arg(long)]
    pub repo: String,
    /// The branch every environment follows.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The environment's folder in the repository. A folder holding kustomization.yaml is
    /// rendered with kustomize, one holding Chart.yaml with helm.
    #[arg(long)]
    pub path: String,
    /// Where the objects go.
    #[arg(long, value_enum, default_value_t = InitTargetArg::Kubernetes)]
    pub target: InitTargetArg,
    /// The environment's name (default: the folder's last component).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubernetes: the namespace for objects without one, made if missing (default: the
    /// environment's name).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Kubernetes: the kubeconfig file (default: in-cluster, KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Directory: the live folder (default: /srv/hydrated/NAME).
    #[arg(long)]
    pub live: Option<PathBuf>,
}
