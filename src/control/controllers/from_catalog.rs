//! `from:` modules: the catalog's manifest, at the highest version the Module's requirement allows,
//! turned into a concrete container, native or engine spec the runtime can run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::api::ModuleSpec;
use crate::api::model::Sha256;
use crate::api::module::{
    ContainerSpec, EngineSpec, EngineType, NativeSpec, PortMapping, Protocol, ResolvedModule,
    VolumeMount,
};
use crate::artifacts::catalog::{Catalog, ManifestVersion, render_template};

/// Why a `from:` module cannot be made concrete; every case needs a change to the spec or catalog.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FromError {
    #[error("module {0:?} is not in the catalog (manifests/ or LAS_CATALOG)")]
    Unknown(String),
    #[error("no version of {name} satisfies {req}; the catalog has {have}")]
    NoVersion {
        name: String,
        req: String,
        have: String,
    },
    /// The version ships a native program that is not installed yet: install it from `url`
    /// (verified against `sha256`) and ask again with its directory.
    #[error("{name} {version} needs its native program from {url} installed")]
    NeedsProgram {
        name: String,
        version: String,
        url: String,
        sha256: Sha256,
    },
    #[error("{name} {version} serves a model: set spec.model")]
    NeedsModel { name: String, version: String },
    #[error("{0}")]
    Template(String),
}

/// The highest version of `name` that satisfies `req` (any version without one).
pub fn pick<'a>(
    catalog: &'a Catalog,
    name: &str,
    req: Option<&semver::VersionReq>,
) -> Result<&'a ManifestVersion, FromError> {
    let module = catalog
        .get(name)
        .ok_or_else(|| FromError::Unknown(name.into()))?;
    module
        .spec
        .versions
        .iter()
        .filter(|v| req.is_none_or(|r| r.matches(&v.version.0)))
        .max_by(|a, b| a.version.0.cmp(&b.version.0))
        .ok_or_else(|| FromError::NoVersion {
            name: name.into(),
            req: req.map(|r| r.to_string()).unwrap_or_else(|| "*".into()),
            have: module
                .spec
                .versions
                .iter()
                .map(|v| v.version.0.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The model a `from:` module serves: its name and the blob on the host.
pub struct ServedBlob<'a> {
    pub name: &'a str,
    pub path: &'a Path,
}

/// A copy of `spec` with `from`/`version` replaced by the manifest's container, native program
/// or engine. `program_dir` is where a native version's program is installed (see
/// [`FromError::NeedsProgram`]).
pub fn concrete(
    spec: &ModuleSpec,
    catalog: &Catalog,
    model: Option<ServedBlob<'_>>,
    program_dir: Option<&Path>,
) -> Result<(ModuleSpec, ResolvedModule), FromError> {
    let name = spec
        .from
        .as_ref()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let mv = pick(catalog, &name, spec.version.as_ref().map(|v| &v.0))?;
    let version = mv.version.0.to_string();
    let resolved = ResolvedModule {
        module: name.clone(),
        version: version.clone(),
    };
    let mut out = spec.clone();
    out.from = None;
    out.version = None;
    if out.health.is_none() {
        out.health = mv.health.clone();
    }
    if mv.engine.is_some() {
        if model.is_none() {
            return Err(FromError::NeedsModel { name, version });
        }
        out.engine = Some(EngineSpec {
            type_: EngineType::Llama,
            context_size: mv.model.as_ref().and_then(|m| m.context_size).unwrap_or(0),
            gpu_layers: -1,
            threads: 0,
            parallel: 1,
            port: 0,
        });
        // The engine serves its own /health; the runtime probes it.
        out.health = None;
        return Ok((out, resolved));
    }
    let port = mv.interfaces.iter().map(|i| i.port).find(|p| *p != 0);
    if let Some(n) = &mv.native {
        let Some(dir) = program_dir else {
            return Err(FromError::NeedsProgram {
                name,
                version,
                url: n.url.clone(),
                sha256: n.sha256.clone(),
            });
        };
        let mut command = n.command.clone();
        command[0] = dir.join(&command[0]).display().to_string();
        let mut env = n.env.clone();
        // A native program reads the model blob where it is.
        let model_path = model.as_ref().map(|m| m.path.display().to_string());
        handoff(mv, model.as_ref(), model_path, port, &mut command, &mut env)?;
        out.native = Some(NativeSpec {
            command,
            env,
            working_dir: Some(dir.to_path_buf()),
        });
        return Ok((out, resolved));
    }
    let Some(c) = &mv.container else {
        unreachable!("a validated manifest version has a container, a native program or an engine");
    };
    let mut args = c.args.clone();
    let mut env = c.env.clone();
    let mut volumes = Vec::new();
    if let (Some(h), Some(m)) = (&mv.model, &model) {
        let mount = h.mount_path.clone().unwrap_or_else(|| "/models".into());
        let file = m
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        handoff(
            mv,
            Some(m),
            Some(format!("{mount}/{file}")),
            port,
            &mut args,
            &mut env,
        )?;
        if let Some(dir) = m.path.parent() {
            volumes.push(VolumeMount {
                host_path: dir.to_path_buf(),
                container_path: mount.into(),
                read_only: true,
            });
        }
    }
    out.container = Some(ContainerSpec {
        image: c.image.clone(),
        command: c.command.clone(),
        args,
        env,
        ports: mv
            .interfaces
            .iter()
            .filter(|i| i.port != 0)
            .map(|i| PortMapping {
                container_port: i.port,
                host_port: Some(i.port),
                protocol: Protocol::Tcp,
            })
            .collect(),
        volumes,
        resources: None,
    });
    Ok((out, resolved))
}

/// The manifest's model hand-off: its argument and environment templates rendered with the model
/// (`model.path` as the program sees it) and the port, appended to `args` and `env`.
fn handoff(
    mv: &ManifestVersion,
    model: Option<&ServedBlob<'_>>,
    model_path: Option<String>,
    port: Option<u16>,
    args: &mut Vec<String>,
    env: &mut BTreeMap<String, String>,
) -> Result<(), FromError> {
    let (Some(h), Some(m), Some(path)) = (&mv.model, model, model_path) else {
        return Ok(());
    };
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("model.path", path),
        ("model.name", m.name.to_string()),
        (
            "model.contextSize",
            h.context_size.unwrap_or(4096).to_string(),
        ),
        ("port", port.map(|p| p.to_string()).unwrap_or_default()),
    ]);
    for a in &h.args {
        args.push(render_template(a, &vars).map_err(FromError::Template)?);
    }
    for (k, v) in &h.env {
        env.insert(
            k.clone(),
            render_template(v, &vars).map_err(FromError::Template)?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectName;

    fn from(name: &str, req: Option<&str>) -> ModuleSpec {
        ModuleSpec {
            from: Some(ObjectName::new(name).unwrap()),
            version: req
                .map(|r| crate::api::module::VersionReq(semver::VersionReq::parse(r).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_catalog_container_becomes_a_pinned_container_with_its_ports_health_and_model_mount() {
        let catalog = Catalog::builtin().catalog;
        let blob = Path::new("/var/las/models/blobs/sha256-abc");
        let mut spec = from("llama-cpp-server", None);
        spec.model = Some(ObjectName::new("tiny").unwrap());
        let (c, r) = concrete(
            &spec,
            &catalog,
            Some(ServedBlob {
                name: "tiny",
                path: blob,
            }),
            None,
        )
        .unwrap();
        assert_eq!(r.module, "llama-cpp-server");
        let ct = c.container.unwrap();
        assert!(ct.image.contains("@sha256:"), "{}", ct.image);
        assert!(
            ct.args
                .windows(2)
                .any(|w| w == ["--model", "/models/sha256-abc"]),
            "{:?}",
            ct.args
        );
        assert_eq!(ct.ports[0].container_port, 8080);
        assert_eq!(ct.volumes[0].container_path, Path::new("/models"));
        assert!(ct.volumes[0].read_only);
        assert!(c.health.is_some() && c.from.is_none());
    }

    #[test]
    fn the_engine_from_the_catalog_needs_a_model_and_becomes_the_built_in_engine() {
        let catalog = Catalog::builtin().catalog;
        let spec = from("llama-engine", Some("^0.1"));
        assert!(matches!(
            concrete(&spec, &catalog, None, None),
            Err(FromError::NeedsModel { .. })
        ));
        let (c, r) = concrete(
            &spec,
            &catalog,
            Some(ServedBlob {
                name: "m",
                path: Path::new("/b"),
            }),
            None,
        )
        .unwrap();
        assert_eq!(
            (r.version.as_str(), c.engine.unwrap().context_size),
            ("0.1.0", 4096)
        );
    }

    #[test]
    fn a_native_version_needs_its_program_installed_then_runs_it_with_the_model_handed_over() {
        let manifest = "apiVersion: localaistack.io/v1alpha1\nkind: ModuleManifest\nmetadata: {name: tool}\nspec:\n  description: A tool.\n  versions:\n  - version: 1.2.0\n    native:\n      url: file:///srv/tools/tool\n      sha256: 0000000000000000000000000000000000000000000000000000000000000000\n      command: [tool, serve]\n      env: {A: b}\n    interfaces: [{name: http, port: 9000, protocol: http}]\n    health: {http: {path: /, port: 9000}}\n    model:\n      args: ['--model', '{{model.path}}', '--port', '{{port}}']\n";
        let catalog = Catalog::from_files(&[crate::api::decode::InputFile {
            name: "tool.yaml".into(),
            bytes: manifest.into(),
        }]);
        assert!(catalog.rejected.is_empty(), "{:?}", catalog.rejected);
        let mut spec = from("tool", Some("^1"));
        spec.model = Some(ObjectName::new("m").unwrap());
        let blob = ServedBlob {
            name: "m",
            path: Path::new("/las/models/blobs/abc"),
        };
        let e = concrete(&spec, &catalog.catalog, Some(blob), None).unwrap_err();
        let FromError::NeedsProgram { url, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(url, "file:///srv/tools/tool");
        let blob = ServedBlob {
            name: "m",
            path: Path::new("/las/models/blobs/abc"),
        };
        let (c, r) = concrete(
            &spec,
            &catalog.catalog,
            Some(blob),
            Some(Path::new("/las/bin/00")),
        )
        .unwrap();
        assert_eq!(r.version, "1.2.0");
        let n = c.native.unwrap();
        assert_eq!(
            n.command,
            [
                "/las/bin/00/tool",
                "serve",
                "--model",
                "/las/models/blobs/abc",
                "--port",
                "9000"
            ]
        );
        assert_eq!(n.env["A"], "b");
        assert!(c.health.is_some() && c.from.is_none() && c.container.is_none());
    }

    #[test]
    fn unknown_modules_and_unsatisfiable_versions_say_what_exists() {
        let catalog = Catalog::builtin().catalog;
        let e = concrete(&from("nope", None), &catalog, None, None).unwrap_err();
        assert!(e.to_string().contains("not in the catalog"));
        let e = concrete(&from("qdrant", Some(">=99")), &catalog, None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("no version of qdrant satisfies >=99"),
            "{e}"
        );
    }
}
