use std::process::ExitCode;

use clap::Parser;
use localaistack::interfaces::cli::{Cli, Command, init_logging, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Daemon(_)));
    run(cli)
}
