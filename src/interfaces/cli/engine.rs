//! `lasctl engine llama ...`: the built-in llama.cpp engine as a native process.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::CliError;
use crate::runtime::engine::{self, EngineConfig};

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    #[command(subcommand)]
    pub engine: EngineKind,
}

#[derive(Debug, clap::Subcommand)]
pub enum EngineKind {
    /// Serve a GGUF model with llama.cpp over an OpenAI-compatible API. Prints
    /// `listening on http://HOST:PORT` once bound and `ready: ...` once the model is loaded.
    Llama(LlamaArgs),
}

#[derive(Debug, clap::Args)]
pub struct LlamaArgs {
    /// The GGUF file to serve.
    #[arg(long)]
    pub model: PathBuf,
    /// The model id clients send (default: the file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Port to listen on; 0 lets the system choose (the chosen port is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Context length per slot in tokens; 0 = the model's own (at most 4096).
    #[arg(long, default_value_t = 0)]
    pub ctx: u32,
    /// Decode threads; 0 = the physical cores this process may use.
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// Layers to offload to a GPU; -1 = all.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub gpu_layers: i32,
    /// Requests decoded at the same time (batched in one context).
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// Requests that may wait for a slot; beyond that the engine answers 503.
    #[arg(long, default_value_t = 16)]
    pub queue: u32,
}

pub fn run(args: EngineArgs) -> Result<ExitCode, CliError> {
    let EngineKind::Llama(a) = args.engine;
    let config = EngineConfig {
        model_name: a.name,
        host: a.host,
        port: a.port,
        ctx: a.ctx,
        threads: a.threads,
        gpu_layers: a.gpu_layers,
        parallel: a.parallel,
        queue: a.queue,
        ..EngineConfig::new(a.model)
    };
    engine::serve(config)?;
    Ok(ExitCode::SUCCESS)
}
