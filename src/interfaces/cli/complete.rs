//! Shell completion and man pages, both from the clap definitions.
//!
//! Completion is dynamic (clap_complete's engine): the shell calls `lasctl` back with
//! `COMPLETE=<shell>` set (see `main`), so kinds and the names of stored objects are completed
//! from the store of the current `LAS_HOME`. `lasctl completion SHELL` prints the registration
//! script that does that; `--static` prints the older script that knows verbs and flags only.
//!
//! # Caveats
//! The completers read the store when one exists and never create one; a home without a
//! `state.db` completes kinds only.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate, ValueCompleter};
use clap_complete::env::EnvCompleter;

use super::CliError;
use crate::api::Kind;
use crate::control::store::Store;
use crate::home::LasHome;

/// Names of stored objects of `kind`.
fn names(kind: Option<Kind>) -> Vec<(Kind, String)> {
    let Ok(home) = LasHome::from_env() else {
        return Vec::new();
    };
    if !home.state_db().exists() {
        return Vec::new();
    }
    let Ok(store) = Store::open(&home.state_db()) else {
        return Vec::new();
    };
    store
        .list(kind, &Default::default())
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.deleted_at.is_none())
        .map(|o| (o.kind, o.name.to_string()))
        .collect()
}

fn lower(k: Kind) -> String {
    k.as_str().to_lowercase()
}

/// The word before the one being completed, from the words the shell passed after `--`.
fn previous_word() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let words = &args[args.iter().position(|a| a == "--")? + 1..];
    let index = std::env::var("_CLAP_COMPLETE_INDEX")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(words.len().saturating_sub(1));
    words.get(index.checked_sub(1)?).cloned()
}

fn matching(current: &OsStr, all: impl IntoIterator<Item = String>) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    let mut v: Vec<String> = all
        .into_iter()
        .filter(|c| c.starts_with(current.as_ref()))
        .collect();
    v.sort();
    v.dedup();
    v.into_iter().map(CompletionCandidate::new).collect()
}

/// An object argument: `KIND NAME` or `KIND/NAME`.
#[derive(Clone, Copy)]
struct Objects {
    /// Extra words in the KIND position (`all`, `sources` for `get`).
    extra: &'static [&'static str],
}

impl Objects {
    fn kind_or_ref(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        let cur = current.to_string_lossy();
        if let Some((k, _)) = cur.split_once('/') {
            let Some(kind) = Kind::parse_loose(k) else {
                return Vec::new();
            };
            return matching(
                current,
                names(Some(kind))
                    .into_iter()
                    .map(|(_, n)| format!("{k}/{n}")),
            );
        }
        matching(
            current,
            Kind::ALL
                .iter()
                .map(|k| lower(*k))
                .chain(self.extra.iter().map(|e| e.to_string())),
        )
    }

    fn name(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        match previous_word().as_deref().and_then(Kind::parse_loose) {
            Some(kind) => matching(current, names(Some(kind)).into_iter().map(|(_, n)| n)),
            None => Vec::new(),
        }
    }
}

impl ValueCompleter for Objects {
    // The engine's value index is not reliable for a positional taking 1..=2 values (the second
    // value is reported at index 0 too), so the word before decides: after a KIND come names.
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        let after_kind = previous_word()
            .as_deref()
            .and_then(Kind::parse_loose)
            .is_some();
        if after_kind && !current.to_string_lossy().contains('/') {
            self.name(current)
        } else {
            self.kind_or_ref(current)
        }
    }
}

/// `KIND NAME | KIND/NAME` arguments (describe, wait, logs, events, delete).
pub fn objects() -> ArgValueCompleter {
    ArgValueCompleter::new(Objects { extra: &[] })
}

/// The KIND of `get` (also `all`, `sources`, `KIND/NAME`).
pub fn get_kind() -> ArgValueCompleter {
    ArgValueCompleter::new(Objects {
        extra: &["all", "sources"],
    })
}

/// The NAME of `get KIND NAME`.
pub fn get_name() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| Objects { extra: &[] }.name(current))
}

/// The MODEL of `lasctl run`: Models and the Modules that serve one.
pub fn models() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        matching(
            current,
            names(None)
                .into_iter()
                .filter(|(k, _)| matches!(k, Kind::Model | Kind::Module))
                .map(|(_, n)| n),
        )
    })
}

/// `lasctl completion SHELL`: the registration script of dynamic completion (or, `--static`,
/// the script generated ahead of time).
pub fn completion(shell: clap_complete::Shell, static_: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if static_ {
        clap_complete::generate(shell, &mut super::Cli::command(), "lasctl", &mut out);
        return Ok(());
    }
    let env: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        other => {
            return Err(CliError::Usage(format!(
                "no dynamic completion for {other}: use --static"
            )));
        }
    };
    // The shell calls this very binary back, wherever it is installed.
    let exe = std::env::current_exe()?;
    let mut buf = Vec::new();
    env.write_registration(
        "COMPLETE",
        "lasctl",
        "lasctl",
        &exe.to_string_lossy(),
        &mut buf,
    )?;
    out.write_all(&buf)?;
    Ok(())
}

/// Writes `lasctl.1` and one page per verb (`lasctl-apply.1`, ...) into `dir`.
pub fn man_pages(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)?;
    let cmd = super::Cli::command();
    clap_mangen::generate_to(cmd, dir)?;
    let mut n = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "1") {
            n += 1;
        }
    }
    eprintln!("{n} man pages in {}", dir.display());
    Ok(())
}
