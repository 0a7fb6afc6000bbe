//! Server settings: defaults, then an optional JSON file, then `THITL_*` environment variables
//! (and the command line, through clap, on top).
//!
//! ```json
//! {"bind": "127.0.0.1:8080", "body_limit_bytes": 1048576, "workers": 2, "wait_for_max_seconds": 10,
//!  "chat_base_url": "http://127.0.0.1:8000/v1", "chat_model": "qwen2.5-7b-instruct"}
//! ```
//!
//! The chat endpoint's key is read from `THITL_CHAT_API_KEY` only, never from the file.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub bind: String,
    /// Largest request body accepted; larger ones are answered 413.
    pub body_limit_bytes: usize,
    /// HTTP worker threads (default: one per CPU).
    pub workers: Option<usize>,
    /// The longest a query with `?wait_for=POS` waits for the read models.
    pub wait_for_max_seconds: u64,
    /// An OpenAI-compatible chat-completions endpoint that curates campaigns' training prompts
    /// (with `chat_model`); without it, the built-in reference-world templates do.
    pub chat_base_url: Option<String>,
    pub chat_model: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".into(),
            body_limit_bytes: 1024 * 1024,
            workers: None,
            wait_for_max_seconds: 10,
            chat_base_url: None,
            chat_model: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {message}")]
    File { path: String, message: String },
    #[error("environment variable {name}={value:?} is not valid: {message}")]
    Env { name: &'static str, value: String, message: String },
}

impl Settings {
    pub fn wait_for_max(&self) -> Duration {
        Duration::from_secs(self.wait_for_max_seconds)
    }

    /// Defaults, overlaid by `file` (if given), overlaid by the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let settings = match file {
            Some(path) => {
                let fail = |message: String| SettingsError::File { path: path.display().to_string(), message };
                let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?
            }
            None => Settings::default(),
        };
        settings.overlay_env(|name| std::env::var(name).ok())
    }

    /// Applies `THITL_BIND`, `THITL_BODY_LIMIT`, `THITL_WORKERS`, `THITL_WAIT_FOR_MAX_SECONDS`,
    /// `THITL_CHAT_BASE_URL`, `THITL_CHAT_MODEL`.
    pub fn overlay_env(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        fn number<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, SettingsError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| SettingsError::Env { name, value, message: e.to_string() })
        }
        if let Some(bind) = var("THITL_BIND") {
            self.bind = bind;
        }
        if let Some(value) = var("THITL_BODY_LIMIT") {
            self.body_limit_bytes = number("THITL_BODY_LIMIT", value)?;
        }
        if let Some(value) = var("THITL_WORKERS") {
            self.workers = Some(number("THITL_WORKERS", value)?);
        }
        if let Some(value) = var("THITL_WAIT_FOR_MAX_SECONDS") {
            self.wait_for_max_seconds = number("THITL_WAIT_FOR_MAX_SECONDS", value)?;
        }
        if let Some(url) = var("THITL_CHAT_BASE_URL") {
            self.chat_base_url = Some(url);
        }
        if let Some(model) = var("THITL_CHAT_MODEL") {
            self.chat_model = Some(model);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thitl.json");
        std::fs::write(&path, r#"{"body_limit_bytes": 2048, "workers": 3}"#).unwrap();
        let from_file = Settings::load(Some(&path)).unwrap();
        assert_eq!((from_file.body_limit_bytes, from_file.workers), (2048, Some(3)));
        let env = |name: &str| (name == "THITL_BODY_LIMIT").then(|| "4096".to_string());
        assert_eq!(from_file.clone().overlay_env(env).unwrap().body_limit_bytes, 4096);
        let bad = |name: &str| (name == "THITL_WORKERS").then(|| "many".to_string());
        assert!(from_file.overlay_env(bad).unwrap_err().to_string().contains("THITL_WORKERS"));
        std::fs::write(&path, r#"{"body_limit": 1}"#).unwrap();
        assert!(Settings::load(Some(&path)).unwrap_err().to_string().contains("unknown field"));
    }
}
