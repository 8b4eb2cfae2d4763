//! The YAML shape of the service table, as serde sees it: every key optional and located,
//! so that the checks in `check.rs` can name file:line:column for any value they reject.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// The whole file. `services` is required by `check.rs`, not here, so that a missing list
/// gets the same kind of located message as every other mistake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub defaults: Option<Spanned<RawService>>,
    pub include: Option<Spanned<Vec<Spanned<String>>>>,
    pub services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

/// A file named by `include:`: services only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncluded {
    pub services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

/// Just enough of each service to name it in a message about a later syntax or type error.
#[derive(Debug, Deserialize)]
pub struct ProbeFile {
    pub services: Option<Vec<Spanned<ProbeService>>>,
}

#[derive(Debug, Deserialize)]
pub struct ProbeService {
    pub name: Option<NameProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NameProbe {
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// The keys a service entry (or `defaults:`) may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub address: Option<Spanned<OneOrMany>>,
    pub port: Option<Spanned<Scalar>>,
    pub path: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub server: Option<Spanned<String>>,
    pub args: Option<Spanned<Vec<String>>>,
    pub builtin: Option<Spanned<String>>,
    pub wait: Option<Spanned<bool>>,
    pub user: Option<Spanned<Scalar>>,
    pub group: Option<Spanned<Scalar>>,
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    pub pass_env: Option<Spanned<Vec<String>>>,
    pub cwd: Option<Spanned<String>>,
    /// `stderr: null` must not read as "absent", so the outer Option is only for absence.
    #[serde(default, deserialize_with = "present")]
    pub stderr: Option<Spanned<Option<String>>>,
    pub max_children: Option<Spanned<i64>>,
    pub per_source: Option<Spanned<i64>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub only_from: Option<Spanned<Vec<Spanned<String>>>>,
    pub no_access: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<Scalar>>,
    pub rlimits: Option<Spanned<BTreeMap<String, Spanned<Scalar>>>>,
    pub nice: Option<Spanned<i64>>,
    pub umask: Option<Spanned<String>>,
    pub backlog: Option<Spanned<i64>>,
    pub keepalive: Option<Spanned<bool>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub disabled: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub max: Option<Spanned<i64>>,
    pub per: Option<Spanned<Scalar>>,
    pub pause: Option<Spanned<Scalar>>,
}

/// A scalar that may be written as a number or as text (`port: 80` / `port: http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
