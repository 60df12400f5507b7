//! The `keys:` section: who manages clients and keys through the API, which roles they may grant,
//! and how long an issued key may live.

use std::time::Duration;

use serde::Deserialize;

use crate::ids::Role;
use crate::units::ConfigDuration;

/// The compiled `keys:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// Roles that may manage other clients and their keys (default `[admin]`).
    pub admin_roles: Vec<Role>,
    /// Roles an admin may grant a store client (default: every role the configuration names).
    pub assignable_roles: Vec<Role>,
    /// The longest life of an issued key; a key asked for without an expiry gets this.
    pub max_ttl: Duration,
}

/// Default `keys.max_ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

impl KeySettings {
    /// The defaults, granting any of `named_roles` (every role the configuration names).
    pub fn defaults(named_roles: Vec<Role>) -> KeySettings {
        KeySettings {
            admin_roles: vec!["admin".parse().expect("a valid role")],
            assignable_roles: named_roles,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

/// The `keys:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    admin_roles: Option<Vec<Role>>,
    assignable_roles: Option<Vec<Role>>,
    max_ttl: Option<ConfigDuration>,
}

impl RawKeys {
    /// Validate the section; `named_roles` is the default of `assignable_roles`.
    pub fn compile(
        self,
        named_roles: Vec<Role>,
    ) -> Result<KeySettings, (&'static [&'static str], String)> {
        let defaults = KeySettings::defaults(named_roles);
        let max_ttl = self.max_ttl.map_or(defaults.max_ttl, |d| d.0);
        if max_ttl.is_zero() {
            return Err((&["max_ttl"], "must be greater than zero".into()));
        }
        Ok(KeySettings {
            admin_roles: self.admin_roles.unwrap_or(defaults.admin_roles),
            assignable_roles: self.assignable_roles.unwrap_or(defaults.assignable_roles),
            max_ttl,
        })
    }
}
