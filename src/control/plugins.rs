//! Plugins as the control layer sees them: manifests read back from verified blobs, activations
//! checked against them at apply time, and the set of active contributions the seams call.
//!
//! # Guarantees
//! - A manifest is only ever read from a blob whose sha256 is the Plugin's `spec.sha256` (or, for
//!   an activation still bound to an older digest, that digest): no unverified byte is parsed
//!   as a manifest or run as code.
//! - An activation is checked against the manifest at apply time when the manifest can be known
//!   then (a local file with the pinned digest, or the stored Plugin's verified manifest); it is
//!   always checked again by its controller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::api::decode::{InputError, InputErrors, InputFile, decode_kind_of};
use crate::api::model::{ModelSource, Sha256};
use crate::api::plugin::{MANIFEST_API_VERSION, MANIFEST_KIND, ManifestSpec};
use crate::api::{Desired, Kind, ObjectName, PluginSpec, Spec};
use crate::control::store::{Store, StoreError, StoredObject};
use crate::home::LasHome;

/// A verified, parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: ObjectName,
    pub spec: ManifestSpec,
    pub digest: Sha256,
}

/// Parses manifest bytes; errors name `file`, line, column and field.
pub fn parse_manifest(file: &str, bytes: &[u8], digest: Sha256) -> Result<Manifest, InputErrors> {
    let f = InputFile {
        name: file.to_string(),
        bytes: bytes.to_vec(),
    };
    let mut docs = decode_kind_of(&f, MANIFEST_API_VERSION, MANIFEST_KIND, |m: &ManifestSpec| {
        m.validate()
    })?;
    if docs.len() != 1 {
        return Err(InputErrors(vec![InputError {
            file: file.to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!(
                "expected exactly one {MANIFEST_KIND} document, found {}",
                docs.len()
            ),
        }]));
    }
    let (name, spec, _) = docs.remove(0);
    Ok(Manifest { name, spec, digest })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Where the blob with `digest` lives in the model store.
pub fn blob_path(home: &LasHome, digest: &str) -> PathBuf {
    crate::artifacts::models::blob_path_in(home, digest)
}

/// Reads the manifest in the blob `digest` (already verified by the store when it was written).
pub fn read_manifest_blob(home: &LasHome, digest: &str, label: &str) -> Option<Manifest> {
    let d = Sha256::new(digest).ok()?;
    let bytes = std::fs::read(blob_path(home, digest)).ok()?;
    // The store's blobs are read-only and verified when written; check again, it is small.
    if sha256_hex(&bytes) != d.as_str() {
        return None;
    }
    parse_manifest(label, &bytes, d).ok()
}

/// The manifest a Plugin pins, as far as it can be known without fetching: a local source file
/// with the pinned digest, or the verified manifest of the stored Plugin. `None`: not knowable
/// now (a remote source not fetched yet, a file that differs) — the controller decides later.
pub fn knowable_manifest(
    home: &LasHome,
    name: &str,
    spec: &PluginSpec,
    stored: Option<&StoredObject>,
) -> Result<Option<Manifest>, InputErrors> {
    if let Some(o) = stored
        && o.status.get("digest").and_then(|d| d.as_str()) == Some(spec.sha256.as_str())
        && let Some(m) = read_manifest_blob(home, spec.sha256.as_str(), name)
    {
        return Ok(Some(m));
    }
    if let ModelSource::File(p) = &spec.source
        && let Ok(bytes) = read_small(p)
        && sha256_hex(&bytes) == spec.sha256.as_str()
    {
        return parse_manifest(&p.display().to_string(), &bytes, spec.sha256.clone()).map(Some);
    }
    Ok(None)
}

fn read_small(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(crate::api::decode::MAX_DOC_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Checks every PluginActivation of an apply against the manifest of its Plugin (from the same
/// apply or the store): contributions that exist, grants within the manifest's requests, config
/// that the contribution's schema accepts. Errors point at the activation's document.
pub fn check_activations(
    home: &LasHome,
    store: &Store,
    objects: &[Desired],
) -> Result<(), InputErrors> {
    let applied: BTreeMap<&str, &PluginSpec> = objects
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Plugin(p) => Some((d.name.as_str(), p)),
            _ => None,
        })
        .collect();
    let mut errors = Vec::new();
    for d in objects {
        let Spec::PluginActivation(a) = &d.spec else {
            continue;
        };
        let plugin = a.plugin_ref.as_str();
        let stored = match store.get(Kind::Plugin, plugin) {
            Ok(o) => Some(o),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => {
                errors.push(at(d, "spec.pluginRef", e.to_string()));
                continue;
            }
        };
        let spec = match (applied.get(plugin), &stored) {
            (Some(s), _) => (*s).clone(),
            (None, Some(o)) => match o.typed_spec() {
                Ok(Spec::Plugin(s)) => s,
                _ => continue,
            },
            // A Plugin applied later: its activation waits (PluginNotReady) and is checked then.
            (None, None) => continue,
        };
        match knowable_manifest(home, plugin, &spec, stored.as_ref()) {
            Ok(Some(m)) => {
                if let Err((path, message)) = a.check_against(&m.spec) {
                    errors.push(at(d, &path, message));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(at(
                d,
                "spec.pluginRef",
                format!("the manifest of plugin {plugin} is invalid: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(errors))
    }
}

fn at(d: &Desired, path: &str, message: String) -> InputError {
    InputError {
        file: d.origin.file.clone(),
        line: d.origin.line,
        column: 1,
        path: path.to_string(),
        message,
    }
}
