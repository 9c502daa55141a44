//! The Model kind: weights as a verified resource, never started by itself.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::meta::Condition;

/// A sha256 digest, kept as 64 lower-case hex characters (upper case is accepted and normalised).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[schemars(
    description = "sha256 digest: 64 hexadecimal characters (stored in lower case)",
    extend("pattern" = "^(sha256:)?[0-9a-fA-F]{64}$")
)]
#[serde(transparent)]
pub struct Sha256(String);

impl Sha256 {
    pub fn new(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        // `sha256sum` prints lower case, some tools upper case: both name the same bytes.
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{s:?} is not a sha256 digest: expected 64 hexadecimal characters"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a model's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(
    with = "String",
    description = "an absolute path, file:///abs/path, http(s)://..., or hf://owner/repo/path/file.gguf@revision"
)]
pub enum ModelSource {
    /// A local file (an absolute path or `file://`).
    File(PathBuf),
    /// `http://` or `https://`.
    Http(String),
    /// `hf://owner/repo/path@revision`; the revision is `None` when floating.
    Hf {
        owner: String,
        repo: String,
        file: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{s:?} is a relative file:// URL: write an absolute path, e.g. file:///srv/models/x.gguf"
                ));
            }
            return Ok(ModelSource::File(PathBuf::from(rest)));
        }
        if s.starts_with('/') {
            return Ok(ModelSource::File(PathBuf::from(s)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            let host = s.split("://").nth(1).unwrap_or("");
            if host.is_empty() || host.starts_with('/') {
                return Err(format!("{s:?} has no host"));
            }
            return Ok(ModelSource::Http(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("hf://") {
            let (path, revision) = match rest.rsplit_once('@') {
                Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
                Some(_) => return Err(format!("{s:?} has an empty revision after '@'")),
                None => (rest, None),
            };
            let mut parts = path.splitn(3, '/');
            let (owner, repo, file) = (parts.next(), parts.next(), parts.next());
            return match (owner, repo, file) {
                (Some(o), Some(r), Some(f)) if !o.is_empty() && !r.is_empty() && !f.is_empty() => {
                    Ok(ModelSource::Hf {
                        owner: o.into(),
                        repo: r.into(),
                        file: f.into(),
                        revision,
                    })
                }
                _ => Err(format!(
                    "{s:?} is not of the form hf://owner/repo/path/file.gguf@revision"
                )),
            };
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?} has an unsupported scheme: use an absolute path, file://, http://, https:// or hf://"
            ));
        }
        Err(format!(
            "{s:?} is a relative path: model sources must be absolute (/path or file:///path)"
        ))
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::File(p) => write!(f, "file://{}", p.display()),
            ModelSource::Http(u) => f.write_str(u),
            ModelSource::Hf {
                owner,
                repo,
                file,
                revision,
            } => {
                write!(f, "hf://{owner}/{repo}/{file}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for ModelSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    #[default]
    Gguf,
}

/// Desired state of a Model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelSpec {
    /// Where the weights come from.
    pub source: ModelSource,
    /// Expected sha256 of the bytes; verified when given. A policy may require it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    /// File format of the weights.
    #[serde(default)]
    pub format: ModelFormat,
}

/// Facts read from a GGUF header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GgufInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_count_kv: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_length: Option<u64>,
}

/// Observed state of a Model, written only by controllers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// sha256 of the stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The content-addressed blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufInfo>,
    /// How far a fetch has come; present only while bytes are downloaded or hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ModelProgress>,
}

/// A fetch in progress, written at most about once a second while it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelProgress {
    /// `Downloading` (bytes fetched or copied) or `Verifying` (bytes hashed).
    pub phase: String,
    pub bytes_done: u64,
    /// Unknown when the server sends no length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Over the interval since the previous report (0 at the first).
    #[serde(default)]
    pub bytes_per_second: u64,
}

impl ModelProgress {
    /// Whole percent done, when the total is known.
    pub fn percent(&self) -> Option<u64> {
        self.bytes_total
            .filter(|t| *t > 0)
            .map(|t| (self.bytes_done.min(t) as u128 * 100 / t as u128) as u64)
    }

    /// `12.0 MiB of 104.0 MiB (11%) fetched, 8.0 MiB/s`: the figures for people.
    pub fn summary(&self) -> String {
        let verb = if self.phase == "Verifying" {
            "hashed"
        } else {
            "fetched"
        };
        let mut s = match (self.bytes_total, self.percent()) {
            (Some(t), Some(pc)) => format!(
                "{} of {} ({pc}%) {verb}",
                binary_bytes(self.bytes_done),
                binary_bytes(t)
            ),
            _ => format!("{} {verb}", binary_bytes(self.bytes_done)),
        };
        if self.bytes_per_second > 0 {
            s.push_str(&format!(", {}/s", binary_bytes(self.bytes_per_second)));
        }
        s
    }
}

/// Bytes in binary units with one decimal: `512 B`, `12.0 MiB`.
pub fn binary_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert!(matches!(
            ModelSource::parse("/a/b.gguf"),
            Ok(ModelSource::File(_))
        ));
        assert!(matches!(
            ModelSource::parse("file:///a/b.gguf"),
            Ok(ModelSource::File(_))
        ));
        assert!(ModelSource::parse("file://a/b.gguf").is_err());
        assert!(ModelSource::parse("models/b.gguf").is_err());
        assert!(ModelSource::parse("ftp://x/y").is_err());
        let hf = ModelSource::parse("hf://o/r/dir/f.gguf@abc").unwrap();
        assert_eq!(hf.to_string(), "hf://o/r/dir/f.gguf@abc");
        assert!(ModelSource::parse("hf://o/f.gguf").is_err());
    }

    #[test]
    fn digests() {
        assert!(Sha256::new(&"a".repeat(64)).is_ok());
        // Issue 12: upper case names the same bytes; it is accepted and normalised.
        assert_eq!(
            Sha256::new(&"A".repeat(64)).unwrap().as_str(),
            "a".repeat(64)
        );
        assert!(Sha256::new(&"g".repeat(64)).is_err());
        assert!(Sha256::new("abc").is_err());
    }
}
