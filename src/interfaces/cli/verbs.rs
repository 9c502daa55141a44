//! Dispatch of verbs to their files, and what several verbs share.

use std::process::ExitCode;

use super::{CliError, Command, FileArgs};
use crate::api::schema::explain;
use crate::api::{API_VERSION, Desired, Kind};
use crate::control::store::Store;
use crate::home::LasHome;

pub fn dispatch(cmd: Command) -> Result<ExitCode, CliError> {
    let ok = Ok(ExitCode::SUCCESS);
    match cmd {
        Command::Apply(a) => super::apply::run(a),
        Command::Get(g) if super::sources::is_sources(&g.kind) && g.watch => Err(CliError::Usage(
            "get sources does not watch (-w); `lasctl events -w` follows what the daemon does with them".into(),
        )),
        Command::Get(g) if super::sources::is_sources(&g.kind) => super::sources::run(g).and(ok),
        Command::Get(g) => super::get::run(g).and(ok),
        Command::Describe { object } => super::describe::run(&object).and(ok),
        Command::Diff(f) => super::diff::run(f),
        Command::Delete(d) => super::delete::run(d).and(ok),
        Command::Explain { path, recursive } => {
            print!("{}", explain(&path, recursive)?);
            ok
        }
        Command::History { object, output } => super::history::run(&object, output).and(ok),
        Command::Rollback {
            generation,
            suspend_source,
            dry_run,
        } => super::history::rollback(generation, suspend_source, dry_run).and(ok),
        Command::Rollout(r) => super::rollout::run(r).and(ok),
        Command::Resume(r) => super::resume::run(r).and(ok),
        Command::Plan(p) => super::plan::run(p),
        Command::Lock(l) => super::lockfile::run(l),
        Command::Hardware(h) => super::hardware::run(h).and(ok),
        Command::Engine(e) => super::engine::run(e),
        Command::LogWriter { max_bytes, path } => {
            crate::runtime::logwriter::run(&path, max_bytes, std::io::stdin().lock())?;
            ok
        }
        Command::Model(m) => super::model::run(m).and(ok),
        Command::Events {
            publish: Some(p), ..
        } => super::events::publish(p).and(ok),
        Command::Events {
            object,
            limit,
            watch: true,
            ..
        } => super::events::watch(&object, limit).and(ok),
        Command::Events { object, limit, .. } => super::events::list(&object, limit).and(ok),
        Command::Wait(a) => super::wait::run(a).and(ok),
        Command::Daemon(a) => super::daemon::run(a).and(ok),
        Command::Logs(a) => super::logs::run(a).and(ok),
        Command::Ui => super::ui::run().and(ok),
        Command::Plugin(c) => super::plugin::run(c).and(ok),
        Command::Workflow(c) => super::workflow::run(c).and(ok),
        Command::Version => {
            println!(
                "lasctl {} (apiVersion {API_VERSION}, built-in engine: {})",
                env!("CARGO_PKG_VERSION"),
                if cfg!(feature = "llama") {
                    "llama"
                } else {
                    "none"
                }
            );
            ok
        }
        Command::Completion { shell, static_ } => {
            super::complete::completion(shell, static_).and(ok)
        }
        Command::ManPages { dir } => super::complete::man_pages(&dir).and(ok),
        Command::Status(a) => super::status::run(a),
        Command::Ps(a) => super::ps::run(a).and(ok),
        Command::Run(a) => super::chat::run(a).and(ok),
        Command::Catalog(c) => super::catalog::run(c).and(ok),
    }
}

pub(crate) fn open_store() -> Result<Store, CliError> {
    let home = LasHome::from_env()?;
    home.ensure()?;
    super::lock::check_same_db(&home)?;
    Ok(Store::open(&home.state_db())?)
}

/// The store for a preview (`plan`, `apply --dry-run`, `diff`): `None` when the home has no
/// state yet, so a preview creates nothing (no directory, no `state.db`).
pub(crate) fn preview_store() -> Result<Option<Store>, CliError> {
    let home = LasHome::from_env()?;
    if !home.state_db().exists() {
        return Ok(None);
    }
    super::lock::check_same_db(&home)?;
    Ok(Some(Store::open(&home.state_db())?))
}

/// Reads and validates `files`; files of a directory that are someone else's are skipped with a
/// notice on stderr.
pub(crate) fn load(files: &FileArgs) -> Result<Vec<(Desired, String)>, CliError> {
    Ok(load_noting(files)?.objects)
}

pub(crate) fn load_noting(files: &FileArgs) -> Result<crate::control::apply::Loaded, CliError> {
    let loaded = crate::control::apply::load(&files.paths, files.recursive)?;
    for s in &loaded.skipped {
        eprintln!("notice: {s}");
    }
    Ok(loaded)
}

pub(crate) fn lower(k: Kind) -> String {
    k.as_str().to_lowercase()
}
