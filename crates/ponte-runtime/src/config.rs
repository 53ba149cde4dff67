//! Layered configuration: built-in defaults, then a TOML file, then environment variables.
//!
//! Environment variables are `PONTE__<SECTION>__<KEY>` (double underscores separate levels, so
//! keys may contain single underscores): `PONTE__KAFKA__BOOTSTRAP_SERVERS=broker:9092`.
use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration that cannot be loaded, naming the source and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: does not exist")]
    MissingFile { path: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Loads configuration of type `T` from `defaults` (TOML text compiled into the binary), then
/// `file` if given, then `PONTE__*` variables from `env` (pass `std::env::vars()`).
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut builder = ::config::Config::builder().add_source(::config::File::from_str(
        defaults,
        ::config::FileFormat::Toml,
    ));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile {
                path: path.display().to_string(),
            });
        }
        builder = builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
    }
    let vars: ::config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PONTE__"))
        .collect();
    builder = builder.add_source(
        ::config::Environment::with_prefix("PONTE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars)),
    );
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Cfg {
        kafka: Kafka,
    }
    #[derive(Debug, Deserialize)]
    struct Kafka {
        bootstrap_servers: String,
        message_timeout_ms: u64,
    }

    const DEFAULTS: &str = "[kafka]\nbootstrap_servers = \"a:1\"\nmessage_timeout_ms = 10\n";

    #[test]
    fn defaults_then_file_then_environment() {
        let c: Cfg = load(DEFAULTS, None, Vec::new()).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "a:1");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ponte.toml");
        std::fs::write(&file, "[kafka]\nbootstrap_servers = \"b:2\"\n").unwrap();
        let c: Cfg = load(DEFAULTS, Some(&file), Vec::new()).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "b:2");
        assert_eq!(c.kafka.message_timeout_ms, 10);

        let env = vec![
            (
                "PONTE__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "c:3".to_owned(),
            ),
            (
                "PONTE__KAFKA__MESSAGE_TIMEOUT_MS".to_owned(),
                "99".to_owned(),
            ),
            (
                "OTHER__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "x:0".to_owned(),
            ),
        ];
        let c: Cfg = load(DEFAULTS, Some(&file), env).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "c:3");
        assert_eq!(c.kafka.message_timeout_ms, 99);
    }

    #[test]
    fn a_missing_file_and_a_bad_value_are_named() {
        let err = load::<Cfg>(
            DEFAULTS,
            Some(Path::new("/nonexistent/ponte.toml")),
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ponte.toml"), "{err}");

        let env = vec![(
            "PONTE__KAFKA__MESSAGE_TIMEOUT_MS".to_owned(),
            "soon".to_owned(),
        )];
        let err = load::<Cfg>(DEFAULTS, None, env).unwrap_err().to_string();
        assert!(err.contains("message_timeout_ms"), "{err}");
    }
}
