use std::process::ExitCode;

use clap::Parser;
use localaistack::interfaces::cli::{Cli, LogFormat, run, usage_exit_code};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors exit 1 as every
            // failure does (2 for diff, whose 1 means "changes").
            let _ = e.print();
            return usage_exit_code(&e);
        }
    };
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
