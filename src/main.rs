use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use localaistack::interfaces::cli::{Cli, Command, init_logging, run, usage_exit_code};

fn main() -> ExitCode {
    // `COMPLETE=bash lasctl ...`: the shell asks for completions (see `lasctl completion`).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors exit 1 as every
            // failure does (2 for diff, whose 1 means "changes").
            let _ = e.print();
            return usage_exit_code(&e);
        }
    };
    init_logging(cli.log_format, matches!(cli.command, Command::Daemon(_)));
    run(cli)
}
