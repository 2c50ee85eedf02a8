//! Identifier newtypes: jobs, tenants, nodes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::is_valid_token;

/// A job's id: a UUIDv7 (time-ordered), written hyphenated on the wire and in keys.
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, format = Uuid)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// A deterministic id derived from a name (e.g. a tenant's idempotency key).
    pub fn derived(namespace: &str, name: &str) -> Self {
        let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"mochi-serve");
        Self(uuid::Uuid::new_v5(
            &ns,
            format!("{namespace}/{name}").as_bytes(),
        ))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// Why a tenant or node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {name:?} is invalid: use 1 to 64 letters, digits, '-' or '_'")]
pub struct InvalidName {
    /// What was being named.
    pub kind: &'static str,
    /// The refused name.
    pub name: String,
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(String);

        impl $name {
            /// Checks that `name` is a valid subject token and wraps it.
            pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
                let name = name.into();
                if is_valid_token(&name) {
                    Ok(Self(name))
                } else {
                    Err(InvalidName { kind: $kind, name })
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}

token_id!(
    /// A tenant: every job belongs to one, and no tenant sees another's jobs.
    TenantId,
    "tenant"
);
token_id!(
    /// A GPU node (one process, one host).
    NodeId,
    "node"
);

impl TenantId {
    /// The tenant used when authentication is off.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_round_trips_through_text() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().expect("parse"), id);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(JobId::derived("t", "k"), JobId::derived("t", "k"));
        assert_ne!(JobId::derived("t", "k"), JobId::derived("u", "k"));
    }

    #[test]
    fn rejects_names_with_subject_wildcards() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("a.b").is_err());
        assert!(NodeId::new("node>").is_err());
        assert!(NodeId::new("").is_err());
    }
}
