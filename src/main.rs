use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use localaistack::interfaces::cli::{Cli, LogFormat, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `COMPLETE=bash lasctl ...`: the shell asks for completions (see `lasctl completion`).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("LAS_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    run(cli)
}
