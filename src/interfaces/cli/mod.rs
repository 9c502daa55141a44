//! `lasctl`: parse, resolve arguments, call the library, map errors to exit codes.

mod apply;
mod catalog;
mod chat;
mod complete;
mod daemon;
mod daemon_record;
mod delete;
mod describe;
mod diff;
mod engine;
mod events;
mod get;
mod hardware;
mod history;
mod lock;
mod lockfile;
mod logging;
mod logs;
mod model;
mod objref;
mod output;
mod plan;
mod plugin;
mod progress;
mod ps;
mod resume;
mod rollout;
mod sources;
mod status;
mod ui;
mod verbs;
mod wait;
mod watch;
mod workflow;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use logging::init as init_logging;
pub use output::OutputFormat;

use crate::api::decode::InputErrors;
use crate::api::schema::ExplainError;
use crate::control::store::StoreError;
use crate::home::HomeError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Input(#[from] InputErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    #[error(transparent)]
    Engine(#[from] crate::runtime::engine::EngineError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Hardware(#[from] crate::control::hardware::HardwareError),
    #[error(transparent)]
    Policy(#[from] crate::control::policy::PolicyError),
    #[error(transparent)]
    Catalog(#[from] crate::artifacts::catalog::CatalogError),
    #[error(transparent)]
    Lock(#[from] crate::control::resolver::LockError),
    #[error(transparent)]
    Client(#[from] crate::interfaces::http::client::ClientError),
    #[error("{0}")]
    Timeout(String),
    /// What was waited for will not happen (stalled, deleted, absent).
    #[error("{0}")]
    Failed(String),
}

impl From<crate::control::apply::ApplyError> for CliError {
    fn from(e: crate::control::apply::ApplyError) -> Self {
        match e {
            crate::control::apply::ApplyError::Input(i) => CliError::Input(i),
            crate::control::apply::ApplyError::Store(s) => CliError::Store(s),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "lasctl",
    version,
    about = "LocalAIStack: a declarative reconciler for a local AI workstation"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record desired state from files, directories or stdin (-).
    Apply(ApplyArgs),
    /// List objects: get KIND [NAME], get all, or get sources (the watched directories).
    Get(GetArgs),
    /// Show an object's spec, status, conditions and recent events: describe KIND NAME (or KIND/NAME).
    Describe {
        #[arg(required = true, num_args = 1..=2, value_name = "KIND NAME | KIND/NAME", add = complete::objects())]
        object: Vec<String>,
    },
    /// Show what an apply would change, as a unified YAML diff (exit 0: none, 1: changes, >1: error).
    Diff(FileArgs),
    /// Record the deletion of objects: delete -f PATH, or delete KIND NAME...
    Delete(DeleteArgs),
    /// Documentation of kinds and fields, e.g. explain module.spec.container.ports.
    Explain {
        path: String,
        #[arg(long)]
        recursive: bool,
    },
    /// List the generations of desired state.
    ///
    /// With an object (KIND NAME or KIND/NAME): the generations that created, changed or deleted
    /// it, and what changed.
    History {
        #[arg(num_args = 0..=2, value_name = "KIND NAME | KIND/NAME")]
        object: Vec<String>,
        #[arg(short = 'o', long = "output", default_value = "table",
              value_parser = output::only(&["table", "json", "yaml"]))]
        output: OutputFormat,
    },
    /// Make desired state equal to an earlier generation (default: the previous one).
    ///
    /// Objects owned by a watched directory are refused unless --suspend-source: the daemon would
    /// apply the directory again and undo the rollback.
    Rollback {
        generation: Option<u64>,
        /// Suspend the watched directories that own rolled-back objects (until `resume source`).
        #[arg(long)]
        suspend_source: bool,
        /// Print the unified diff the rollback would apply, and record nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Follow a rollout: rollout status module/NAME waits until it is Ready at its generation.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Resume what a rollback suspended: resume source PATH.
    #[command(subcommand)]
    Resume(resume::ResumeCommand),
    /// The durable event log, of one object (KIND NAME or KIND/NAME) or all; -w follows it from the daemon.
    /// `events publish REASON MESSAGE` records a custom event through the daemon.
    #[command(args_conflicts_with_subcommands = true)]
    Events {
        #[command(subcommand)]
        publish: Option<events::EventsCommand>,
        #[arg(num_args = 0..=2, value_name = "KIND NAME | KIND/NAME", add = complete::objects())]
        object: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// After the log, print every new event as the daemon records it.
        #[arg(short = 'w', long = "watch")]
        watch: bool,
    },
    /// The ordered actions an apply would cause, projected RAM/VRAM, and every refusal (writes
    /// nothing; exit 1 when anything is refused).
    Plan(plan::PlanArgs),
    /// Resolve the from: Modules of PATH and write las.lock beside it (apply does this too).
    Lock(lockfile::LockArgs),
    /// The detected hardware profile and the tier it falls in.
    Hardware(hardware::HardwareArgs),
    /// Run a built-in inference engine: engine llama --model PATH [--port N] ...
    Engine(engine::EngineArgs),
    /// Local model-file tools: generate-test, inspect.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Wait until an object's condition holds at its current generation.
    Wait(WaitArgs),
    /// Output of a Module, from the daemon.
    Logs(LogsArgs),
    /// Run the controllers, the watched directories and the HTTP API.
    Daemon(daemon::DaemonArgs),
    /// Plugins: list, describe, inventory (by seam), test one contribution, grants.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Workflows of active plugins: list, run NAME --input FILE, runs [NAME], get RUN.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Print a one-time link that signs a browser into the daemon's web console.
    Ui,
    /// Print version information.
    Version,
    /// Which home, its daemon, Docker, GPU, disk, tier, and what needs attention (exit 1 if anything).
    #[command(visible_alias = "doctor")]
    Status(status::StatusArgs),
    /// What runs now: each Module's pid or container, endpoint, uptime, RAM, VRAM, requests served.
    Ps(ps::PsArgs),
    /// Chat with a served model: run MODEL [PROMPT] (one answer with PROMPT or piped stdin).
    Run(chat::RunArgs),
    /// The module catalog that `from:` names: catalog list, catalog show NAME.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Print the shell completion script (dynamic: completes the names in the store).
    Completion {
        shell: clap_complete::Shell,
        /// The script generated ahead of time (verbs and flags only, no object names).
        #[arg(long = "static")]
        static_: bool,
    },
    /// Internal: writes the man pages (lasctl.1, lasctl-VERB.1) into DIR (`make install` runs it).
    #[command(hide = true)]
    ManPages { dir: PathBuf },
    /// Internal: copies a native workload's output from stdin into PATH, rotating by rename
    /// (started by the daemon's native runtime; see `runtime::logwriter`).
    #[command(hide = true)]
    LogWriter {
        #[arg(long)]
        max_bytes: u64,
        path: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// A file, a directory, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Descend into subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Validate and show what would change, recording nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete objects an earlier apply of the same PATH recorded and this one no longer has.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: allow pruning every object of a PATH.
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
    /// With --prune and -f -: the scope stdin's objects are recorded and pruned in (stdin has
    /// no path to scope them; without a name, --prune with stdin is refused).
    #[arg(long, value_name = "NAME", requires = "prune")]
    pub prune_scope: Option<String>,
    /// name, json or yaml (default: one line per object).
    #[arg(short = 'o', long = "output", value_parser = output::only(&["name", "json", "yaml"]))]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// model, module, policy (singular, plural or short: mo, mod, pol), KIND/NAME, all or sources.
    #[arg(add = complete::get_kind())]
    pub kind: String,
    #[arg(add = complete::get_name())]
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Label selector: k=v[,k=v].
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// After the list, print a row whenever a listed object changes (until interrupted).
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// KIND NAME or KIND/NAME, e.g. module/chat.
    #[arg(required = true, num_args = 1..=2, value_name = "KIND NAME | KIND/NAME", add = complete::objects())]
    pub object: Vec<String>,
    /// condition=TYPE[=True|False|Unknown]
    #[arg(long = "for", default_value = "condition=Ready")]
    pub for_: String,
    /// e.g. 60s, 2m, 500ms.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// KIND NAME or KIND/NAME, e.g. module/chat.
    #[arg(required = true, num_args = 1..=2, value_name = "KIND NAME | KIND/NAME", add = complete::objects())]
    pub object: Vec<String>,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[arg(short = 'f', long = "filename")]
    pub paths: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// KIND NAME... or KIND/NAME... when no -f is given.
    #[arg(add = complete::objects())]
    pub args: Vec<String>,
}

pub(crate) fn parse_selector(s: Option<&str>) -> Result<BTreeMap<String, String>, CliError> {
    let mut m = BTreeMap::new();
    for part in s.unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("selector {part:?} is not of the form key=value"))
        })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

/// The exit code of a command line clap refused: 0 for `--help` and `--version`, 2 for `diff`
/// (whose 1 means "changes"), else 1 like every other failure.
pub fn usage_exit_code(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let diff = std::env::args().skip(1).find(|a| !a.starts_with('-')) == Some("diff".into());
    ExitCode::from(if diff { 2 } else { 1 })
}

/// Runs one parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let diff = matches!(cli.command, Command::Diff(_));
    match verbs::dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            // diff reserves 1 for "changes"; errors are 2 there.
            ExitCode::from(if diff { 2 } else { 1 })
        }
    }
}
