//! Roles and the actions each allows.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every route: its tenant's jobs, every tenant's admin views, keys, dead letters.
    Admin,
    /// Create, read, cancel and download its own tenant's jobs.
    Submitter,
    /// Read and download its own tenant's jobs.
    Viewer,
}

impl Role {
    /// The role's name on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submitter => "submitter",
            Self::Viewer => "viewer",
        }
    }

    /// Whether the role may do `action`.
    pub fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Self::Admin, _)
                | (
                    Self::Submitter,
                    Action::Read | Action::Submit | Action::Cancel
                )
                | (Self::Viewer, Action::Read)
        )
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "admin" => Ok(Self::Admin),
            "submitter" => Ok(Self::Submitter),
            "viewer" => Ok(Self::Viewer),
            other => Err(format!(
                "unknown role {other:?}: use admin, submitter or viewer"
            )),
        }
    }
}

/// What a route does, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a job, its video or the fleet.
    Read,
    /// Create a job.
    Submit,
    /// Cancel a job.
    Cancel,
    /// Admin views: keys, dead letters.
    Admin,
}

impl Action {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Read => "read jobs",
            Self::Submit => "create jobs",
            Self::Cancel => "cancel jobs",
            Self::Admin => "use the admin API",
        }
    }
}
