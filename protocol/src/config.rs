//! Layered configuration shared by every role: defaults → TOML file section → environment
//! variables `MOCHI_<SECTION>__<FIELD>` (nested fields joined by `__`).

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML")]
    Toml {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value does not fit its field (wrong type, unknown field).
    #[error("invalid [{section}] configuration: {message}")]
    Invalid {
        /// The section.
        section: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Loads section `section` of type `T`: its defaults, overlaid by the TOML file's
/// `[section]` table, overlaid by `MOCHI_<SECTION>__<FIELD>` entries of `env`.
pub fn load_section<T>(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    section: &str,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let invalid = |message: String| ConfigError::Invalid {
        section: section.to_owned(),
        message,
    };
    let mut merged = serde_json::to_value(T::default()).map_err(|e| invalid(e.to_string()))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        if let Some(value) = table.get(section) {
            let overlay = serde_json::to_value(value).map_err(|e| invalid(e.to_string()))?;
            merge(&mut merged, overlay);
        }
    }
    let prefix = format!("MOCHI_{}__", section.to_ascii_uppercase());
    let mut keys: Vec<&String> = env.keys().filter(|k| k.starts_with(&prefix)).collect();
    keys.sort();
    for key in keys {
        let path: Vec<String> = key[prefix.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        set_path(&mut merged, &path, &env[key]);
    }
    serde_json::from_value(merged).map_err(|e| invalid(e.to_string()))
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Sets `path` in `root` from an environment string, typed after the default it replaces:
/// strings stay strings; numbers, booleans and lists are parsed as JSON.
fn set_path(root: &mut Value, path: &[String], raw: &str) {
    let mut node = root;
    for (index, key) in path.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = node else { return };
        if index + 1 == path.len() {
            let wants_string = matches!(map.get(key), Some(Value::String(_)));
            let value = match serde_json::from_str::<Value>(raw) {
                Ok(parsed) if !wants_string => parsed,
                _ => Value::String(raw.to_owned()),
            };
            map.insert(key.clone(), value);
            return;
        }
        node = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// How to reach NATS and how the JetStream resources are created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// A `.creds` file for this role's NATS user (decentralised JWT/NKey authentication).
    pub credentials_file: Option<String>,
    /// This role's NATS user (server-side `authorization` block: one user per role, see
    /// `docs/operations.md`); its inboxes are `_INBOX_<user>.*`.
    pub user: Option<String>,
    /// The password of [`NatsConfig::user`] (env `MOCHI_NATS__PASSWORD`); redacted in `Debug`.
    pub password: Option<Secret>,
    /// Seconds to wait for the first connection.
    pub connect_timeout_s: u64,
    /// Settings of the streams, buckets and object store created at start-up.
    pub jetstream: JetStreamConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            user: None,
            password: None,
            connect_timeout_s: 60,
            jetstream: JetStreamConfig::default(),
        }
    }
}

/// A secret setting (a password): its `Debug` form is redacted, so that logging a
/// configuration never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Settings of the JetStream resources; see `docs/operations.md` for why each default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Replicas of every stream and bucket: 1 for one server, 3 in production.
    pub replicas: u32,
    /// Most jobs waiting in `MOCHI_SUBMIT`; beyond it submissions are refused (back-pressure).
    pub submit_max_msgs: i64,
    /// How long a repeated `Nats-Msg-Id` (idempotency key) is recognised, seconds.
    pub duplicate_window_s: u64,
    /// A node whose heartbeat is older than this is gone, seconds.
    pub node_ttl_s: u64,
    /// Largest total size of stored videos, bytes (-1: no limit).
    pub videos_max_bytes: i64,
    /// How long stored videos are kept, seconds (0: forever).
    pub videos_max_age_s: u64,
    /// How long dead letters are kept, seconds.
    pub dlq_max_age_s: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            submit_max_msgs: 100_000,
            // 24 h: a client may retry a submission with the same idempotency key for a day.
            duplicate_window_s: 24 * 3600,
            node_ttl_s: 10,
            videos_max_bytes: -1,
            videos_max_age_s: 7 * 24 * 3600,
            dlq_max_age_s: 30 * 24 * 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("mochi-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("mochi.toml");
        std::fs::write(&file, "[nats]\nurl = \"nats://file:4222\"\nconnect_timeout_s = 3\n[nats.jetstream]\nreplicas = 3\n")
            .expect("write");
        let env = HashMap::from([
            ("MOCHI_NATS__CONNECT_TIMEOUT_S".to_owned(), "7".to_owned()),
            (
                "MOCHI_NATS__JETSTREAM__NODE_TTL_S".to_owned(),
                "20".to_owned(),
            ),
            ("MOCHI_OTHER__X".to_owned(), "ignored".to_owned()),
        ]);
        let config: NatsConfig = load_section(Some(&file), &env, "nats").expect("load");
        assert_eq!(config.url, "nats://file:4222");
        assert_eq!(config.connect_timeout_s, 7);
        assert_eq!(config.jetstream.replicas, 3);
        assert_eq!(config.jetstream.node_ttl_s, 20);
        assert_eq!(
            config.jetstream.submit_max_msgs,
            JetStreamConfig::default().submit_max_msgs
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn user_and_password_come_from_env_and_the_password_is_redacted() {
        let env = HashMap::from([
            ("MOCHI_NATS__USER".to_owned(), "gateway".to_owned()),
            (
                "MOCHI_NATS__PASSWORD".to_owned(),
                "s3cretPassw0rd".to_owned(),
            ),
        ]);
        let config: NatsConfig = load_section(None, &env, "nats").expect("load");
        assert_eq!(config.user.as_deref(), Some("gateway"));
        assert_eq!(
            config.password.as_ref().map(Secret::expose),
            Some("s3cretPassw0rd")
        );
        let logged = format!("{config:?}");
        assert!(!logged.contains("s3cretPassw0rd"), "{logged}");
        assert!(logged.contains("<redacted>"), "{logged}");
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        let env = HashMap::from([("MOCHI_NATS__URL".to_owned(), "4222".to_owned())]);
        let config: NatsConfig = load_section(None, &env, "nats").expect("load");
        assert_eq!(config.url, "4222");
    }

    #[test]
    fn unknown_env_field_is_an_error_naming_it() {
        let env = HashMap::from([("MOCHI_NATS__URLL".to_owned(), "x".to_owned())]);
        let error = load_section::<NatsConfig>(None, &env, "nats").expect_err("unknown field");
        assert!(error.to_string().contains("urll"), "{error}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let env = HashMap::from([(
            "MOCHI_NATS__CONNECT_TIMEOUT_S".to_owned(),
            "soon".to_owned(),
        )]);
        assert!(load_section::<NatsConfig>(None, &env, "nats").is_err());
    }
}
