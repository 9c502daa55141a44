//! `lasctl resume source PATH`: lifts the suspension `rollback --suspend-source` recorded; the
//! running daemon notices the store change and applies the directory at once.

use std::path::PathBuf;

use super::CliError;
use crate::control::apply::source_key;

#[derive(Debug, clap::Subcommand)]
pub enum ResumeCommand {
    /// Apply a suspended watched directory again.
    Source { path: PathBuf },
}

pub fn run(cmd: ResumeCommand) -> Result<(), CliError> {
    let ResumeCommand::Source { path } = cmd;
    let key = source_key(&path);
    let mut store = super::verbs::open_store()?;
    if !crate::control::sources::resume(&mut store, &key)? {
        return Err(CliError::Usage(format!(
            "source {key} is not suspended (see lasctl get sources)"
        )));
    }
    println!("source {key} resumed: the daemon applies it again");
    Ok(())
}
