//! Legacy text plugins: Loci-style `<stem>.plugin.json` / `<stem>.plugin.toml` contracts beside an
//! executable `<stem>`, imported into a plugin manifest with compatibility metadata and served
//! through the exec bridge as inference hooks (`pre_generate` → `preRequest`, `post_generate` →
//! `postResponse`).
//!
//! A contract is recognised by its content (a JSON object, or TOML, with a `kind`), so a Plugin
//! may pin the contract itself as its manifest. The import is a pure function of the contract's
//! bytes: the same bytes always give the same manifest.
//!
//! # Caveats
//! - A contract pins nothing, and no unverified byte runs: the executable's sha256 must be in
//!   the contract (`"sha256"`, our addition). `lasctl plugin import FILE` computes it from the
//!   executable beside the file and prints the manifest with it.
//! - The executable is `executable` (our addition) or, without it, the contract's `name`; Loci
//!   takes the file's stem, which `lasctl plugin import` does too.
//! - `transform_logits` and `post_sample` run inside Loci's sampler loop, in-process; a process
//!   behind a pipe cannot, so they are refused.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ObjectName;
use crate::api::decode::{InputError, InputErrors};
use crate::api::model::Sha256;
use crate::api::plugin::{
    Artifact, Compatibility, Contributions, ExecProtocol, HookStage, InferenceHook, LegacyKind,
    ManifestSpec, PluginRuntime, PluginRuntimeType, SourceFormat,
};
use crate::sandbox::{CallOutcome, Limits, Module, SandboxError};

/// The fields of a Loci text-plugin contract, plus our three optional ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub abi_version: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The executable beside the contract (default: `name`).
    #[serde(default)]
    pub executable: Option<String>,
    /// sha256 of the executable (required to run it).
    #[serde(default)]
    pub sha256: Option<String>,
    /// `oneShot` (default: the text on stdin, the text on stdout) or `lines`.
    #[serde(default)]
    pub protocol: Option<ExecProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

/// Whether `bytes` are a legacy contract (rather than a YAML manifest), and in which format.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        return v.get("kind").is_some().then_some(Format::Json);
    }
    let doc: toml_edit::DocumentMut = text.parse().ok()?;
    doc.get("kind").is_some().then_some(Format::Toml)
}

fn err(file: &str, line: usize, column: usize, path: &str, message: String) -> InputErrors {
    InputErrors(vec![InputError {
        file: file.to_string(),
        line,
        column,
        path: path.to_string(),
        message,
    }])
}

/// The line a top-level TOML key is on (1 when not found).
fn toml_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

fn toml_to_json(item: &toml_edit::Item) -> Value {
    use toml_edit::{Item, Value as T};
    fn val(v: &T) -> Value {
        match v {
            T::String(s) => json!(s.value()),
            T::Integer(i) => json!(i.value()),
            T::Float(f) => json!(f.value()),
            T::Boolean(b) => json!(b.value()),
            T::Datetime(d) => json!(d.value().to_string()),
            T::Array(a) => Value::Array(a.iter().map(val).collect()),
            T::InlineTable(t) => {
                Value::Object(t.iter().map(|(k, v)| (k.to_string(), val(v))).collect())
            }
        }
    }
    match item {
        Item::None => Value::Null,
        Item::Value(v) => val(v),
        Item::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), toml_to_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .map(|t| toml_to_json(&Item::Table(t.clone())))
                .collect(),
        ),
    }
}

/// Decodes a contract strictly; errors name the file, line, column and field.
pub fn parse_contract(file: &str, bytes: &[u8]) -> Result<Contract, InputErrors> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| err(file, 1, 1, "", format!("not UTF-8: {e}")))?
        .trim_start_matches('\u{feff}');
    match sniff(bytes) {
        Some(Format::Json) | None if text.trim_start().starts_with('{') => {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let inner = e.inner();
                err(
                    file,
                    inner.line(),
                    inner.column(),
                    &e.path().to_string(),
                    inner.to_string(),
                )
            })
        }
        _ => {
            let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                    .unwrap_or(1);
                err(file, line, 1, "", e.message().to_string())
            })?;
            let v = toml_to_json(doc.as_item());
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let key = path
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let msg = e.inner().to_string();
                let key = if key.is_empty() || key == "?" {
                    msg.split('`').nth(1).unwrap_or_default().to_string()
                } else {
                    key
                };
                err(file, toml_line(text, &key), 1, &path, msg)
            })
        }
    }
}

/// The manifest a contract maps to. `file` names the contract in errors.
pub fn to_manifest(file: &str, c: &Contract) -> Result<(ObjectName, ManifestSpec), InputErrors> {
    let at = |path: &str, message: String| err(file, 1, 1, path, message);
    let name: ObjectName = c
        .name
        .parse()
        .map_err(|e| at("name", format!("{:?}: {e}", c.name)))?;
    if c.kind != "text_plugin" {
        return Err(at(
            "kind",
            format!(
                "{:?} is not supported: only legacy plugins of kind text_plugin have a bridge",
                c.kind
            ),
        ));
    }
    let mut hooks = Vec::new();
    for (i, cap) in c.capabilities.iter().enumerate() {
        let (id, stage, entry) = match cap.as_str() {
            "pre_generate" => ("pre-generate", HookStage::PreRequest, "pre_generate"),
            "post_generate" => ("post-generate", HookStage::PostResponse, "post_generate"),
            "transform_logits" | "post_sample" => {
                return Err(at(
                    &format!("capabilities[{i}]"),
                    format!(
                        "not supported: {cap} runs inside the sampler, in-process, which a plugin behind the exec bridge cannot; pre_generate and post_generate are"
                    ),
                ));
            }
            other => {
                return Err(at(
                    &format!("capabilities[{i}]"),
                    format!("unknown capability {other:?}: expected pre_generate or post_generate"),
                ));
            }
        };
        if hooks.iter().any(|h: &InferenceHook| h.id == id) {
            return Err(at(
                &format!("capabilities[{i}]"),
                format!("{cap} appears twice"),
            ));
        }
        hooks.push(InferenceHook {
            id: id.into(),
            stage,
            entry: entry.into(),
            config_schema: None,
        });
    }
    if hooks.is_empty() {
        return Err(at(
            "capabilities",
            "a text plugin needs pre_generate or post_generate".into(),
        ));
    }
    let executable = c.executable.clone().unwrap_or_else(|| c.name.clone());
    if executable.is_empty() || executable.contains('/') || executable.starts_with('.') {
        return Err(at(
            "executable",
            format!("{executable:?}: expected a file name beside the contract"),
        ));
    }
    let sha = c.sha256.as_deref().ok_or_else(|| {
        at(
            "sha256",
            format!(
                "the contract pins no executable: add \"sha256\": \"<sha256 of {executable}>\" (lasctl plugin import FILE prints the manifest with it)"
            ),
        )
    })?;
    let sha = Sha256::new(sha).map_err(|e| at("sha256", e))?;
    let spec = ManifestSpec {
        version: c.version.clone(),
        host_api: "^1".into(),
        target_tracks: Vec::new(),
        runtime: PluginRuntime {
            type_: PluginRuntimeType::Exec,
            artifacts: vec![Artifact {
                name: "executable".into(),
                path: executable,
                sha256: sha,
            }],
            protocol: Some(c.protocol.unwrap_or(ExecProtocol::OneShot)),
        },
        contributes: Contributions {
            inference_hooks: hooks,
            ..Default::default()
        },
        requests: Vec::new(),
        network_requests: Vec::new(),
        limits: None,
        bootstrap: None,
        compatibility: Some(Compatibility {
            source_format: SourceFormat::Legacy,
            legacy_kind: Some(LegacyKind::TextPlugin),
            legacy_abi_version: Some(c.abi_version),
            legacy_capabilities: c.capabilities.clone(),
            runtime_bridge: Some(PluginRuntimeType::Exec),
        }),
    };
    spec.validate()
        .map_err(|(p, m)| at(p.trim_start_matches("spec."), m))?;
    Ok((name, spec))
}

/// `lasctl plugin import FILE`: the manifest (YAML) a contract file maps to. Without a `sha256`
/// the executable beside the file is hashed; without an `executable` the file's stem names it.
pub fn import(path: &std::path::Path) -> Result<String, InputErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| err(&file, 1, 1, "", e.to_string()))?;
    let mut c = parse_contract(&file, &bytes)?;
    let fname = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = fname
        .strip_suffix(".plugin.json")
        .or_else(|| fname.strip_suffix(".plugin.toml"));
    if c.executable.is_none()
        && let Some(stem) = stem
        && stem != c.name
    {
        c.executable = Some(stem.to_string());
    }
    if c.sha256.is_none() {
        let exe_name = c.executable.clone().unwrap_or_else(|| c.name.clone());
        let exe = path.with_file_name(&exe_name);
        let b = std::fs::read(&exe).map_err(|e| {
            err(
                &file,
                1,
                1,
                "sha256",
                format!(
                    "the contract pins no executable and {} cannot be read to pin it: {e}",
                    exe.display()
                ),
            )
        })?;
        c.sha256 = Some(crate::control::plugins::sha256_hex(&b));
    }
    let (name, spec) = to_manifest(&file, &c)?;
    let doc = json!({
        "apiVersion": crate::api::plugin::MANIFEST_API_VERSION,
        "kind": crate::api::plugin::MANIFEST_KIND,
        "metadata": {"name": name.as_str()},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).map_err(|e| err(&file, 1, 1, "", e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Serving: text in, text out.

/// Wraps an exec plugin's handle so a text plugin serves as an inference hook: the request's
/// last user message (or prompt) goes in as `{"text"}` to `pre_generate`, the answer's first
/// choice to `post_generate`, and the text that comes back replaces it (`rewrite`).
pub struct LegacyText {
    pub inner: Arc<dyn Module>,
}

/// Where the text is: a chat request's last user message, a completion's prompt, an answer's
/// first choice.
fn text_slot<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match key {
        "request" => {
            if v.get("messages").is_some() {
                let msgs = v.get_mut("messages")?.as_array_mut()?;
                let m = msgs.iter_mut().rev().find(|m| m["role"] == "user")?;
                m.get_mut("content").filter(|c| c.is_string())
            } else {
                v.get_mut("prompt").filter(|p| p.is_string())
            }
        }
        _ => {
            let c = v.get_mut("choices")?.get_mut(0)?;
            if c.get("message").is_some() {
                c.get_mut("message")?
                    .get_mut("content")
                    .filter(|c| c.is_string())
            } else {
                c.get_mut("text").filter(|t| t.is_string())
            }
        }
    }
}

impl Module for LegacyText {
    fn call(
        &self,
        entry: &str,
        input: &Value,
        limits: &Limits,
    ) -> Result<CallOutcome, SandboxError> {
        let key = if entry == "pre_generate" {
            "request"
        } else {
            "response"
        };
        let mut value = input.get(key).cloned().unwrap_or(Value::Null);
        let Some(text) = text_slot(&mut value, key)
            .and_then(|t| t.as_str())
            .map(String::from)
        else {
            // Nothing textual to transform (e.g. a multi-part message): pass it on.
            return Ok(CallOutcome {
                output: json!({"action": "allow"}),
                fuel_used: 0,
                logs: Vec::new(),
            });
        };
        let out = self.inner.call(entry, &json!({"text": text}), limits)?;
        let new = out
            .output
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                SandboxError::BadOutput(format!(
                    "a text plugin answers {{\"text\": …}}, got {}",
                    out.output
                ))
            })?
            .to_string();
        if let Some(slot) = text_slot(&mut value, key) {
            *slot = Value::String(new);
        }
        Ok(CallOutcome {
            output: json!({"action": "rewrite", key: value}),
            fuel_used: out.fuel_used,
            logs: out.logs,
        })
    }

    fn exports(&self) -> Vec<String> {
        vec!["post_generate".into(), "pre_generate".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn a_json_contract_maps_to_an_exec_manifest_with_compatibility_metadata() {
        let text = format!(
            r#"{{"name":"upper","version":"1.2.0","kind":"text_plugin","abi_version":1,"capabilities":["pre_generate","post_generate"],"sha256":"{SHA}"}}"#
        );
        assert_eq!(sniff(text.as_bytes()), Some(Format::Json));
        let c = parse_contract("u.plugin.json", text.as_bytes()).unwrap();
        let (name, m) = to_manifest("u.plugin.json", &c).unwrap();
        assert_eq!(name.as_str(), "upper");
        assert_eq!(m.runtime.type_, PluginRuntimeType::Exec);
        assert_eq!(m.executable().unwrap().path, "upper");
        assert!(m.is_legacy_text());
        let hooks: Vec<_> = m
            .contributes
            .inference_hooks
            .iter()
            .map(|h| (h.id.as_str(), h.stage))
            .collect();
        assert_eq!(
            hooks,
            vec![
                ("pre-generate", HookStage::PreRequest),
                ("post-generate", HookStage::PostResponse)
            ]
        );
    }

    #[test]
    fn a_toml_contract_is_read_and_unsupported_capabilities_are_refused_by_name() {
        let text = format!(
            "name = \"upper\"\nversion = \"1.0.0\"\nkind = \"text_plugin\"\nabi_version = 1\ncapabilities = [\"pre_generate\", \"transform_logits\"]\nsha256 = \"{SHA}\"\n"
        );
        assert_eq!(sniff(text.as_bytes()), Some(Format::Toml));
        let c = parse_contract("u.plugin.toml", text.as_bytes()).unwrap();
        let e = to_manifest("u.plugin.toml", &c).unwrap_err().to_string();
        assert!(
            e.contains("capabilities[1]") && e.contains("not supported: transform_logits"),
            "{e}"
        );
        // An unknown field names its line.
        let e = parse_contract("u.plugin.toml", b"name = \"x\"\ncolour = \"blue\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("u.plugin.toml:2") && e.contains("colour"), "{e}");
        // A YAML manifest is not a contract.
        assert_eq!(sniff(b"apiVersion: x\nkind: PluginManifest\n"), None);
    }

    #[test]
    fn a_contract_without_an_executable_digest_says_how_to_pin_it() {
        let c = parse_contract(
            "u.plugin.json",
            br#"{"name":"upper","version":"1.0.0","kind":"text_plugin","abi_version":1,"capabilities":["post_generate"]}"#,
        )
        .unwrap();
        let e = to_manifest("u.plugin.json", &c).unwrap_err().to_string();
        assert!(e.contains("sha256") && e.contains("plugin import"), "{e}");
    }

    struct Upper;
    impl Module for Upper {
        fn call(&self, _: &str, input: &Value, _: &Limits) -> Result<CallOutcome, SandboxError> {
            Ok(CallOutcome {
                output: json!({"text": input["text"].as_str().unwrap().to_uppercase()}),
                fuel_used: 0,
                logs: vec![],
            })
        }
        fn exports(&self) -> Vec<String> {
            vec![]
        }
    }

    #[test]
    fn the_text_adapter_rewrites_the_last_user_message_and_the_first_choice() {
        let m = LegacyText {
            inner: Arc::new(Upper),
        };
        let req = json!({"request": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}});
        let out = m.call("pre_generate", &req, &Limits::default()).unwrap();
        assert_eq!(out.output["action"], "rewrite");
        assert_eq!(out.output["request"]["messages"][1]["content"], "HI");
        assert_eq!(out.output["request"]["messages"][0]["content"], "s");
        let resp = json!({"response": {"choices": [{"text": "abc"}]}});
        let out = m.call("post_generate", &resp, &Limits::default()).unwrap();
        assert_eq!(out.output["response"]["choices"][0]["text"], "ABC");
    }
}
