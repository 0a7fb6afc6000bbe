//! `thitl model …`: Stable Diffusion pipelines as users bring them (diffusers folders). So far the
//! tokenizer: the ids the pipeline's text encoder would be fed for a prompt; sampling is to come.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use gpu::sd::PipelineFolder;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the token ids a diffusers StableDiffusionPipeline feeds its text encoder for TEXT
    /// (start token, the prompt's tokens, end token, padding; cut to the tokenizer's
    /// model_max_length), as one JSON line: {"input_ids": [...]}.
    Tokenize {
        /// A diffusers pipeline folder: model_index.json naming StableDiffusionPipeline, and tokenizer/.
        path: PathBuf,
        /// The prompt.
        text: String,
    },
}

pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Tokenize { path, text } => {
            let tokenizer = PipelineFolder::open(&path)?.tokenizer()?;
            let input_ids = tokenizer.encode_padded(&text)?;
            println!("{}", serde_json::json!({ "input_ids": input_ids }));
            Ok(ExitCode::SUCCESS)
        }
    }
}
