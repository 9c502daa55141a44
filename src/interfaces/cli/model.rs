//! `lasctl model ...`: local model-file tools that need no daemon.

use std::path::PathBuf;

use super::CliError;
use crate::artifacts::gguf::read_header;
use crate::artifacts::testmodel::{Precision, TestModelConfig, generate};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Write a small llama-architecture GGUF with random weights (for tests, benchmarks, demos).
    GenerateTest(GenerateTestArgs),
    /// Print the facts read from a GGUF file's header, as JSON.
    Inspect { path: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct GenerateTestArgs {
    /// Where to write the .gguf file (replaced if it exists).
    pub path: PathBuf,
    /// tiny: ~400k parameters, for tests; bench: ~30M parameters, for benchmarks.
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "bench"])]
    pub preset: String,
    /// Seed of the random weights; the same seed gives the same file.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Store weight matrices as F16 instead of F32.
    #[arg(long)]
    pub f16: bool,
}

pub fn run(cmd: ModelCommand) -> Result<(), CliError> {
    match cmd {
        ModelCommand::GenerateTest(a) => {
            let cfg = TestModelConfig::preset(&a.preset)
                .ok_or_else(|| CliError::Usage(format!("unknown preset {:?}", a.preset)))?
                .with_seed(a.seed)
                .with_precision(if a.f16 {
                    Precision::F16
                } else {
                    Precision::F32
                });
            let m = generate(&a.path, &cfg).map_err(|e| CliError::Usage(e.to_string()))?;
            println!(
                "wrote {} ({} bytes, {} parameters, vocabulary {}, preset {}, seed {}, {})",
                m.path.display(),
                m.size_bytes,
                m.parameter_count,
                m.n_vocab,
                a.preset,
                a.seed,
                if a.f16 { "F16" } else { "F32" }
            );
            Ok(())
        }
        ModelCommand::Inspect { path } => {
            let h = read_header(&path).map_err(|e| CliError::Usage(e.to_string()))?;
            let mut v = serde_json::to_value(h.info()).unwrap_or_default();
            v["sizeBytes"] = h.file_size.into();
            v["tensors"] = h.tensors.len().into();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
    }
}
