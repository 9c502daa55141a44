//! The module catalog: manifests of real software (`manifests/*.yaml`), one file per module with
//! all its versions.
//!
//! ```yaml
//! apiVersion: localaistack.io/v1alpha1
//! kind: ModuleManifest
//! metadata: {name: open-webui}
//! spec:
//!   description: ...
//!   versions:
//!   - version: 0.6.5
//!     container: {image: "ghcr.io/open-webui/open-webui:v0.6.5@sha256:<64 hex>", env: {K: V}}
//!     requirements: {memoryBytes: 1073741824, gpu: optional}
//!     dependencies: [{name: ollama, version: "^0.6"}]
//!     conflicts: [{name: x, version: "*", reason: "both bind port 8080"}]
//!     interfaces: [{name: web, port: 8080, protocol: http}]
//!     health: {http: {path: /health, port: 8080}}
//!     model: {args: ["-m", "{{model.path}}"]}
//! ```
//!
//! # Guarantees
//! - Manifests are decoded with the same strictness as desired state (unknown fields refused,
//!   errors as `file:line:col: field.path: message`) and validated further: versions are semver and
//!   unique, images are pinned by `@sha256:` digest, binaries by `sha256`, templates use only known
//!   variables, dependency requirements parse.
//! - A file with any error is reported and ignored as a whole: never half-loaded.
//!
//! # Caveats
//! - Digests are checked for form here; whether the registry serves those bytes is checked when the
//!   runtime pulls (a digest mismatch fails the pull, it never runs something else).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::ObjectName;
use crate::api::decode::{InputError, InputFile, decode_kind};
use crate::api::model::Sha256;
use crate::api::module::{EngineType, HealthSpec, VersionReq};

/// The environment variable that replaces the built-in catalog with a directory of manifests.
pub const CATALOG_ENV: &str = "LAS_CATALOG";

/// The manifests shipped in `manifests/`, compiled in.
const BUILTIN: &[(&str, &str)] = &[
    (
        "manifests/llama-cpp-server.yaml",
        include_str!("../../manifests/llama-cpp-server.yaml"),
    ),
    (
        "manifests/llama-engine.yaml",
        include_str!("../../manifests/llama-engine.yaml"),
    ),
    (
        "manifests/ollama.yaml",
        include_str!("../../manifests/ollama.yaml"),
    ),
    (
        "manifests/open-webui.yaml",
        include_str!("../../manifests/open-webui.yaml"),
    ),
    (
        "manifests/qdrant.yaml",
        include_str!("../../manifests/qdrant.yaml"),
    ),
    (
        "manifests/text-embeddings-inference.yaml",
        include_str!("../../manifests/text-embeddings-inference.yaml"),
    ),
];

/// A semver version, as a string in YAML.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub semver::Version);

impl Default for Version {
    fn default() -> Self {
        Version(semver::Version::new(0, 0, 0))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        semver::Version::parse(&s)
            .map(Version)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a semver version: {e}")))
    }
}

/// The spec of a ModuleManifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestSpec {
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    pub versions: Vec<ManifestVersion>,
}

/// One installable version. Exactly one of `container`, `native`, `engine`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManifestVersion {
    pub version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerArtifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeArtifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineArtifact>,
    #[serde(default)]
    pub requirements: Requirements,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// How a Module's `model:` is handed to the software.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelHandoff>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerArtifact {
    /// `repo[:tag]@sha256:<64 hex>`: pinned by digest.
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Container paths that keep data across restarts (a volume per path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeArtifact {
    /// Where the program is fetched from: `https://…` or, for air-gapped catalogs, `file:///…`.
    pub url: String,
    /// sha256 of the downloaded bytes.
    pub sha256: Sha256,
    /// argv; the program (`command[0]`) is the fetched file's name, resolved in its install
    /// directory.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EngineArtifact {
    #[serde(rename = "type")]
    pub type_: EngineType,
}

/// Whether a workload needs a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuNeed {
    #[default]
    None,
    Optional,
    Required,
}

/// What the module needs from the hardware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Requirements {
    /// RAM of the software itself, besides any model it serves.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Disk for the software (image or binary).
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub gpu: GpuNeed,
    /// e.g. `7.5`, for CUDA builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_compute_capability: Option<String>,
    /// CPU features the build needs, e.g. `avx2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_features: Vec<String>,
    /// `x86_64`, `aarch64`; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dependency {
    pub name: ObjectName,
    pub version: VersionReq,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conflict {
    pub name: ObjectName,
    #[serde(default = "any_version")]
    pub version: VersionReq,
    pub reason: String,
}

fn any_version() -> VersionReq {
    VersionReq(semver::VersionReq::STAR)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceProtocol {
    /// An OpenAI-compatible HTTP API (`/v1/...`).
    Openai,
    Http,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    /// Port inside the container (or the native process's port); 0: chosen at start.
    pub port: u16,
    pub protocol: InterfaceProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How the served Model reaches the software: argv and env templates. Variables:
/// `{{model.path}}` (the file as the module sees it), `{{model.name}}`, `{{model.contextSize}}`,
/// `{{port}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelHandoff {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where the model blob is mounted read-only inside a container; `{{model.path}}` is under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Context size when the Module does not say (tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u32>,
}

/// The variables a template may use.
pub const TEMPLATE_VARS: &[&str] = &["model.path", "model.name", "model.contextSize", "port"];

/// Expands `{{var}}` placeholders; unknown variables are an error (manifests are validated so
/// that this never happens for catalog templates).
pub fn render_template(t: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| format!("template {t:?} has an unclosed {{{{"))?;
        let var = after[..j].trim();
        let v = vars.get(var).ok_or_else(|| {
            format!(
                "template {t:?} uses unknown variable {var:?}; known: {}",
                TEMPLATE_VARS.join(", ")
            )
        })?;
        out.push_str(v);
        rest = &after[j + 2..];
    }
    if rest.contains("}}") {
        return Err(format!("template {t:?} has a stray }}}}"));
    }
    out.push_str(rest);
    Ok(out)
}

fn check_template(t: &str) -> Result<(), String> {
    let vars: BTreeMap<&str, String> = TEMPLATE_VARS.iter().map(|v| (*v, String::new())).collect();
    render_template(t, &vars).map(|_| ())
}

/// Checks an image reference is pinned: `name[:tag]@sha256:<64 lower-case hex>`.
pub fn check_pinned_image(image: &str) -> Result<(), String> {
    let Some((name, digest)) = image.split_once('@') else {
        return Err(format!(
            "image {image:?} is not pinned: append @sha256:<digest> (docker buildx imagetools inspect IMAGE shows it)"
        ));
    };
    if name.is_empty() {
        return Err(format!("image {image:?} has no repository"));
    }
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("image {image:?}: the digest must be sha256:<64 hex characters>"))?;
    Sha256::new(hex)
        .map(|_| ())
        .map_err(|e| format!("image {image:?}: {e}"))
}

impl ManifestVersion {
    /// The exact thing installed: `image@sha256:…`, `url#sha256=…`, or `builtin:llama`.
    pub fn artifact(&self) -> String {
        if let Some(c) = &self.container {
            c.image.clone()
        } else if let Some(n) = &self.native {
            format!("{}#sha256={}", n.url, n.sha256)
        } else if let Some(e) = &self.engine {
            format!(
                "builtin:{}",
                serde_json::to_value(e.type_)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    }

    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let n = self.container.is_some() as u8
            + self.native.is_some() as u8
            + self.engine.is_some() as u8;
        if n != 1 {
            return Err((
                at.into(),
                "a version needs exactly one of container, native, engine".into(),
            ));
        }
        if let Some(c) = &self.container {
            check_pinned_image(&c.image).map_err(|m| (format!("{at}.container.image"), m))?;
        }
        if let Some(nat) = &self.native {
            if nat.command.is_empty() {
                return Err((
                    format!("{at}.native.command"),
                    "command needs at least the program".into(),
                ));
            }
            if !nat.url.starts_with("https://") && !nat.url.starts_with("file:///") {
                return Err((
                    format!("{at}.native.url"),
                    format!(
                        "{:?} must be an https:// URL or an absolute file:/// path (air-gapped catalogs)",
                        nat.url
                    ),
                ));
            }
        }
        if let Some(m) = &self.model {
            for (i, a) in m.args.iter().enumerate() {
                check_template(a).map_err(|e| (format!("{at}.model.args[{i}]"), e))?;
            }
            for (k, v) in &m.env {
                check_template(v).map_err(|e| (format!("{at}.model.env.{k}"), e))?;
            }
        }
        if let Some(h) = &self.health {
            let forms = h.http.is_some() as u8 + h.tcp.is_some() as u8 + h.exec.is_some() as u8;
            if forms != 1 {
                return Err((
                    format!("{at}.health"),
                    "health needs exactly one of http, tcp, exec".into(),
                ));
            }
        }
        if let Some(cc) = &self.requirements.min_compute_capability {
            let ok = cc
                .split_once('.')
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
            if !ok {
                return Err((
                    format!("{at}.requirements.minComputeCapability"),
                    format!("{cc:?} is not of the form MAJOR.MINOR, e.g. 7.5"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.dependencies.iter().enumerate() {
            if !seen.insert(d.name.as_str()) {
                return Err((
                    format!("{at}.dependencies[{i}].name"),
                    format!("{} is listed twice", d.name),
                ));
            }
        }
        let mut ports = std::collections::BTreeSet::new();
        for (i, it) in self.interfaces.iter().enumerate() {
            // Port 0: chosen when the process starts (the built-in engine).
            if it.port != 0 && !ports.insert(it.port) {
                return Err((
                    format!("{at}.interfaces[{i}].port"),
                    format!("port {} is listed twice", it.port),
                ));
            }
        }
        Ok(())
    }
}

impl ManifestSpec {
    /// Checks what serde cannot (see the module documentation).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.versions.is_empty() {
            return Err((
                "spec.versions".into(),
                "a manifest needs at least one version".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, v) in self.versions.iter().enumerate() {
            let at = format!("spec.versions[{i}]");
            if !seen.insert(v.version.clone()) {
                return Err((
                    format!("{at}.version"),
                    format!("version {} appears twice", v.version),
                ));
            }
            v.validate(&at)?;
        }
        Ok(())
    }
}

/// One module of the catalog, its versions sorted highest first.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogModule {
    pub name: String,
    pub spec: ManifestSpec,
    /// The file it was read from.
    pub file: String,
}

impl CatalogModule {
    pub fn new(name: impl Into<String>, mut spec: ManifestSpec, file: impl Into<String>) -> Self {
        spec.versions.sort_by(|a, b| b.version.cmp(&a.version));
        CatalogModule {
            name: name.into(),
            spec,
            file: file.into(),
        }
    }
    pub fn version(&self, v: &semver::Version) -> Option<&ManifestVersion> {
        self.spec.versions.iter().find(|m| &m.version.0 == v)
    }
}

/// The catalog: modules by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    modules: BTreeMap<String, CatalogModule>,
}

/// A catalog and the manifests that were ignored, with why.
#[derive(Debug, Clone, Default)]
pub struct LoadedCatalog {
    pub catalog: Catalog,
    /// One entry per problem; every file named here was ignored as a whole.
    pub rejected: Vec<InputError>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Catalog {
    pub fn from_modules(modules: impl IntoIterator<Item = CatalogModule>) -> Catalog {
        Catalog {
            modules: modules.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&CatalogModule> {
        self.modules.get(name)
    }

    pub fn modules(&self) -> impl Iterator<Item = &CatalogModule> {
        self.modules.values()
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Decodes manifest files. A file with any error contributes nothing; a module defined by two
    /// files is kept from the first (in the order given) and the second is rejected.
    pub fn from_files(files: &[InputFile]) -> LoadedCatalog {
        let mut out = LoadedCatalog::default();
        for f in files {
            match decode_kind::<ManifestSpec>(f, "ModuleManifest", ManifestSpec::validate) {
                Ok(docs) => {
                    let mut dup = None;
                    for (name, _, line) in &docs {
                        if let Some(existing) = out.catalog.modules.get(name.as_str()) {
                            dup = Some(InputError {
                                file: f.name.clone(),
                                line: *line,
                                column: 1,
                                path: "metadata.name".into(),
                                message: format!(
                                    "module {name} is already defined in {}; file ignored",
                                    existing.file
                                ),
                            });
                        }
                    }
                    if let Some(d) = dup {
                        out.rejected.push(d);
                        continue;
                    }
                    for (name, spec, _) in docs {
                        out.catalog.modules.insert(
                            name.to_string(),
                            CatalogModule::new(name.as_str(), spec, f.name.clone()),
                        );
                    }
                }
                Err(e) => out.rejected.extend(e.0),
            }
        }
        out
    }

    /// The manifests compiled into the binary (`manifests/`).
    pub fn builtin() -> LoadedCatalog {
        let files: Vec<InputFile> = BUILTIN
            .iter()
            .map(|(n, t)| InputFile {
                name: (*n).into(),
                bytes: t.as_bytes().to_vec(),
            })
            .collect();
        Catalog::from_files(&files)
    }

    /// Every `*.yaml`, `*.yml` and `*.json` of a directory, in name order.
    pub fn load_dir(dir: &Path) -> Result<LoadedCatalog, CatalogError> {
        let files = crate::api::decode::read_paths(&[dir.to_path_buf()], false).map_err(|e| {
            CatalogError::ReadDir {
                path: dir.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(Catalog::from_files(&files))
    }

    /// `LAS_CATALOG=DIR` when set, else the built-in manifests.
    pub fn from_env() -> Result<LoadedCatalog, CatalogError> {
        match std::env::var_os(CATALOG_ENV).filter(|v| !v.is_empty()) {
            Some(d) => Catalog::load_dir(Path::new(&d)),
            None => Ok(Catalog::builtin()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> LoadedCatalog {
        Catalog::from_files(&[InputFile {
            name: "m.yaml".into(),
            bytes: text.as_bytes().to_vec(),
        }])
    }

    const HEAD: &str = "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {name: x}\nspec:\n  description: d\n  versions:\n";

    #[test]
    fn builtin_manifests_are_valid() {
        let l = Catalog::builtin();
        assert!(l.rejected.is_empty(), "{:?}", l.rejected);
        for m in [
            "llama-cpp-server",
            "llama-engine",
            "ollama",
            "open-webui",
            "qdrant",
            "text-embeddings-inference",
        ] {
            assert!(l.catalog.get(m).is_some(), "{m} missing");
        }
    }

    #[test]
    fn unpinned_image_is_rejected_with_position() {
        let l = load(&format!(
            "{HEAD}  - version: 1.0.0\n    container: {{image: \"busybox:1.36\"}}\n"
        ));
        assert!(l.catalog.is_empty());
        let e = l.rejected[0].to_string();
        assert!(e.starts_with("m.yaml:8:"), "{e}");
        assert!(
            e.contains("spec.versions[0].container.image: image \"busybox:1.36\" is not pinned"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_and_template_var_are_rejected() {
        let l = load(&format!(
            "{HEAD}  - version: 1.0.0\n    engine: {{type: llama}}\n    bogus: 1\n"
        ));
        assert!(
            l.rejected[0].to_string().contains("unknown field `bogus`"),
            "{:?}",
            l.rejected
        );
        let l = load(&format!(
            "{HEAD}  - version: 1.0.0\n    engine: {{type: llama}}\n    model: {{args: [\"{{{{model.file}}}}\"]}}\n"
        ));
        assert!(
            l.rejected[0]
                .to_string()
                .contains("unknown variable \"model.file\""),
            "{:?}",
            l.rejected
        );
    }

    #[test]
    fn a_file_with_one_bad_document_is_ignored_whole() {
        let good = "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {name: good}\nspec:\n  description: d\n  versions:\n  - version: 1.0.0\n    engine: {type: llama}\n";
        let l = load(&format!(
            "{good}---\n{HEAD}  - version: nope\n    engine: {{type: llama}}\n"
        ));
        assert!(l.catalog.is_empty());
        assert_eq!(l.rejected.len(), 1);
        assert!(
            l.rejected[0].message.contains("not a semver version"),
            "{:?}",
            l.rejected
        );
    }

    #[test]
    fn templates_render() {
        let vars = BTreeMap::from([("model.path", "/m/x.gguf".to_string())]);
        assert_eq!(
            render_template("-m={{ model.path }}", &vars).unwrap(),
            "-m=/m/x.gguf"
        );
        assert!(render_template("{{model.path", &vars).is_err());
    }
}
