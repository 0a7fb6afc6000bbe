//! `thitl prompts`: the training-prompt generator a campaign uses, built from the settings, and
//! `thitl prompts draft`, which prints what it writes for an association and records nothing —
//! so that a curator can try a chat endpoint before a campaign relies on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use app::prompts::{
    OpenAiCompatible, PromptGenerator, PromptRequest, ReferenceWorldTemplates, RetryPolicy, TemplateGenerator,
};
use clap::Subcommand;

use crate::configuration::Settings;

#[derive(Subcommand)]
pub enum PromptsCommand {
    /// Print the training prompts a campaign's prompt set would get for an association, as one
    /// JSON object {"prompts": [...], "generator": {...}}; nothing is recorded. The generator is
    /// the chat endpoint the settings or flags name (its key from THITL_CHAT_API_KEY), else the
    /// built-in reference-world templates.
    Draft {
        /// The group the prompts show (e.g. woman).
        #[arg(long)]
        group: String,
        /// The concept they must not name (e.g. hippopotamus).
        #[arg(long)]
        concept: String,
        /// Another word for the concept, also to avoid (repeatable).
        #[arg(long = "synonym")]
        synonyms: Vec<String>,
        /// How many prompts (a campaign asks for its training_prompts_per_association).
        #[arg(long, default_value_t = domain::campaign::CampaignSettings::default().training_prompts_per_association,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// An OpenAI-compatible chat endpoint, http:// or https:// (e.g. https://api.openai.com/v1),
        /// with --chat-model. HTTPS trusts the system's certificates, or SSL_CERT_FILE's;
        /// HTTPS_PROXY and NO_PROXY apply.
        #[arg(long)]
        chat_base_url: Option<String>,
        /// The model to ask (e.g. gpt-4o-mini).
        #[arg(long)]
        chat_model: Option<String>,
        /// A settings file as `thitl serve` reads it (chat_base_url, chat_model); THITL_CHAT_BASE_URL
        /// and THITL_CHAT_MODEL override it, and the flags above override both.
        #[arg(long, env = "THITL_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// What `draft` prints: the prompts, then what wrote them (as a prompt set's events record it).
#[derive(serde::Serialize)]
struct Draft<'a> {
    prompts: &'a [String],
    generator: &'a domain::prompt_set::GeneratorInfo,
}

pub fn run(command: PromptsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PromptsCommand::Draft { group, concept, synonyms, count, seed, chat_base_url, chat_model, config } => {
            let mut settings = Settings::load(config.as_deref())?;
            if chat_base_url.is_some() {
                settings.chat_base_url = chat_base_url;
            }
            if chat_model.is_some() {
                settings.chat_model = chat_model;
            }
            let generator = prompt_generator(&settings)?;
            let request = PromptRequest { group, concept, concept_synonyms: synonyms, count: count as usize, seed };
            let generated = generator.generate(&request)?;
            let printed = Draft { prompts: &generated.prompts, generator: &generated.generator };
            println!("{}", serde_json::to_string_pretty(&printed)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The chat endpoint the settings name (its key from `THITL_CHAT_API_KEY`), or the
/// reference-world templates.
pub fn prompt_generator(settings: &Settings) -> anyhow::Result<Box<dyn PromptGenerator>> {
    Ok(match (&settings.chat_base_url, &settings.chat_model) {
        (Some(base_url), Some(model)) => Box::new(OpenAiCompatible {
            base_url: base_url.clone(),
            model: model.clone(),
            api_key: std::env::var("THITL_CHAT_API_KEY").ok().filter(|key| !key.is_empty()),
            temperature: 0.7,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
        }),
        (None, None) => Box::new(TemplateGenerator::new(ReferenceWorldTemplates)),
        _ => {
            anyhow::bail!("chat_base_url and chat_model go together: set both (or neither, for the built-in templates)")
        }
    })
}
