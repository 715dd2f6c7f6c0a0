//! The toolkit every stage reads its own section of the configuration with.
//!
//! Each stage owns its settings type and the function that reads it from its
//! TOML section (`ingest::CameraSettings`, `publish::MqttSettings`, …);
//! `config` only assembles the sections. What they share lives here, at the
//! bottom of the dependency graph, so that no stage imports `config`:
//! [`Fields`] (read a table key by key, every problem collected), the error
//! type those problems become ([`ConfigError`]), credentials that never print
//! ([`Secret`], [`PasswordSource`]) and the one URL redaction ([`redact_url`])
//! used by logs, `/api/cameras`, status payloads and errors.

mod fields;
mod redact;

use std::fmt;
use std::path::PathBuf;

pub(crate) use fields::{
    boolean, describe, duration, duration_at_least, duration_in, float_in, non_empty_string,
    one_of, secret_string, string, uint_in, Errors, Fields, Problem,
};
pub use redact::{redact_text, redact_url, REDACTED};

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the file: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: not valid TOML: {reason}")]
    Syntax { file: String, reason: String },
    /// `origin` is the file or `environment variable FLORENCE_EDGE__…`.
    #[error("{origin}: {key}: {problem}{}", allowed_suffix(.allowed))]
    Invalid {
        origin: String,
        key: String,
        problem: String,
        allowed: Option<String>,
    },
}

fn allowed_suffix(allowed: &Option<String>) -> String {
    match allowed {
        Some(allowed) => format!(" (allowed: {allowed})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The key path the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A credential. Debug and Display print `***` so that a `{:?}` of any
/// settings struct can go to a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself, for the one place that hands it to a library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A password given inline or as a file to read at start (the file keeps it
/// out of the configuration, which is often world-readable or in git).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(Secret),
    File(PathBuf),
}

impl PasswordSource {
    /// The password; a file's trailing newline is not part of it.
    pub fn read(&self) -> std::io::Result<Secret> {
        match self {
            PasswordSource::Inline(secret) => Ok(secret.clone()),
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path)?;
                Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
        }
    }
}

/// `password` or `password_file` of the table `f`, never both; `None` when
/// neither is set or the pair is wrong (reported).
pub(crate) fn password(f: &mut Fields, errors: &mut Errors) -> Option<PasswordSource> {
    let inline = f.opt("password", errors, secret_string);
    let file = f.opt("password_file", errors, path_value);
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.report(
                f.origin(),
                &f.key_path("password_file"),
                Problem::new(
                    "password and password_file are both set",
                    "one of password or password_file",
                ),
            );
            None
        }
        (Some(secret), None) => Some(PasswordSource::Inline(Secret::new(secret))),
        (None, Some(path)) => Some(PasswordSource::File(path)),
        (None, None) => None,
    }
}

/// A non-empty file system path.
pub(crate) fn path_value(value: &::config::Value) -> Result<PathBuf, Problem> {
    non_empty_string(value)
        .map(PathBuf::from)
        .map_err(|p| Problem::new(p.problem, "a file system path"))
}
