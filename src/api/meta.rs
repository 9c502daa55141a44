//! Object metadata, names, kinds and conditions shared by every kind.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// The only apiVersion this build understands.
pub const API_VERSION: &str = "localaistack.io/v1alpha1";

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, at most 63
/// characters. Once constructed it is valid, so nothing inside the program checks it again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
#[schemars(
    description = "DNS-1123 label: lower-case letters, digits and '-', at most 63 characters",
    extend("pattern" = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(s: &str) -> Result<Self, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if s.is_empty() {
            return Err("name must not be empty".into());
        }
        if s.len() > 63 {
            return Err(format!(
                "name {s:?} is {} characters long; at most 63 are allowed",
                s.len()
            ));
        }
        if !ok_chars || s.starts_with('-') || s.ends_with('-') {
            return Err(format!(
                "name {s:?} is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit"
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ObjectName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for ObjectName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s)
    }
}

/// The kinds this version knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Kind {
    Model,
    Module,
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Model, Kind::Module, Kind::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "Model",
            Kind::Module => "Module",
            Kind::Policy => "Policy",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Module => "modules",
            Kind::Policy => "policies",
        }
    }
    /// kubectl-style short names, accepted wherever a kind is.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Model => &["mo"],
            Kind::Module => &["mod"],
            Kind::Policy => &["pol", "pl"],
        }
    }
    /// Accepts `Model`, `model`, `models` and the short names, in any case.
    pub fn parse_loose(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            l == k.as_str().to_ascii_lowercase()
                || l == k.plural()
                || k.short_names().contains(&l.as_str())
        })
    }
    pub fn known_list() -> String {
        Kind::ALL.map(|k| k.as_str()).join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to another object, as used by `dependsOn`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: Kind,
    pub name: ObjectName,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The annotation that marks the shipped policies where they are shown as objects (`get
/// policies` while no Policy is stored: then they are the ones in effect). Set by the system only:
/// in input it is accepted and dropped, so a saved built-in policy applies as one's own.
pub const BUILT_IN_ANNOTATION: &str = "localaistack.io/built-in";

/// A field the system sets. Accepted in input (so `get -o yaml | apply -f -` round-trips) and
/// ignored: the system keeps its own value.
pub type SystemSet = Option<serde::de::IgnoredAny>;

/// `metadata.resourceVersion` in input: a non-negative integer, as a string (as `get` prints it)
/// or a number. When present, the write is conditional on it (a stale value is a conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceVersion(pub u64);

impl<'de> Deserialize<'de> for ResourceVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ResourceVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a resourceVersion (a non-negative integer, as get prints it)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ResourceVersion, E> {
                Ok(ResourceVersion(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ResourceVersion, E> {
                u64::try_from(v)
                    .map(ResourceVersion)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ResourceVersion, E> {
                v.trim()
                    .parse()
                    .map(ResourceVersion)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Metadata as a user writes it, or as `get -o yaml` prints it: the system's fields are accepted
/// and ignored, except `resourceVersion`, which makes the write conditional.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InputMeta {
    pub name: ObjectName,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(skip)]
    pub uid: SystemSet,
    #[serde(default)]
    #[schemars(skip)]
    pub generation: SystemSet,
    #[serde(default)]
    #[schemars(skip)]
    pub resource_version: Option<ResourceVersion>,
    #[serde(default)]
    #[schemars(skip)]
    pub creation_timestamp: SystemSet,
    #[serde(default)]
    #[schemars(skip)]
    pub deletion_timestamp: SystemSet,
    #[serde(default)]
    #[schemars(skip)]
    pub finalizers: SystemSet,
}

impl InputMeta {
    /// Checks labels and annotations as Kubernetes does; returns a field path and a message.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (k, v) in &self.labels {
            check_qualified_key(k).map_err(|m| (format!("metadata.labels.{k}"), m))?;
            check_label_value(v).map_err(|m| (format!("metadata.labels.{k}"), m))?;
        }
        for k in self.annotations.keys() {
            check_qualified_key(k).map_err(|m| (format!("metadata.annotations.{k}"), m))?;
        }
        Ok(())
    }
}

/// A label's name part (and a label value): at most 63 characters, letters, digits, '-', '_'
/// and '.', starting and ending with a letter or digit.
fn is_label_segment(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `[prefix/]name`, the prefix a DNS subdomain (at most 253 characters), as Kubernetes checks
/// label and annotation keys.
pub fn check_qualified_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "key {k:?}: the prefix {p:?} must be a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters)"
            ));
        }
    }
    if !is_label_segment(name) {
        return Err(format!(
            "key {k:?} is not valid: expected [prefix/]name, the name 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of letters, digits, '-', '_' and '.',
/// starting and ending with a letter or digit.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_label_segment(v) {
        Ok(())
    } else {
        Err(format!(
            "value {v:?} is not a valid label value: expected at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (or empty)"
        ))
    }
}

/// Metadata as the system reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: ObjectName,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the system: unique per incarnation of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Set by the system: increases only when `spec` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Set by the system: changes on every write, status included. Send it back to make a write
    /// conditional (a stale value is a conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// One observation about an object, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling`, `Stalled` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// CamelCase reason, e.g. `Verified`.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    pub last_transition_time: String,
}

/// Sets `cond` in `conds`, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(conds: &mut Vec<Condition>, mut cond: Condition) {
    if let Some(old) = conds.iter_mut().find(|c| c.type_ == cond.type_) {
        if old.status == cond.status {
            cond.last_transition_time = old.last_transition_time.clone();
        }
        *old = cond;
    } else {
        conds.push(cond);
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_names() {
        for ok in ["a", "tiny", "qwen2-0-5b", &"a".repeat(63)] {
            assert!(ObjectName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(ObjectName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_parse_loosely() {
        assert_eq!(Kind::parse_loose("models"), Some(Kind::Model));
        assert_eq!(Kind::parse_loose("Module"), Some(Kind::Module));
        assert_eq!(Kind::parse_loose("policies"), Some(Kind::Policy));
        assert_eq!(Kind::parse_loose("pods"), None);
    }
}
