//! JSON Schemas of the kinds (the files in `crds/`) and `explain`, both from the same types.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::meta::{API_VERSION, Kind};
use super::{Model, Module, Policy};

/// The JSON Schema (draft 2020-12) of one kind, as committed in `crds/<kind>.schema.json`.
pub fn kind_schema(kind: Kind) -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = match kind {
        Kind::Model => generator.into_root_schema_for::<Model>(),
        Kind::Module => generator.into_root_schema_for::<Module>(),
        Kind::Policy => generator.into_root_schema_for::<Policy>(),
    };
    let mut v = schema.to_value();
    let obj = v.as_object_mut().expect("root schema is an object");
    obj.insert(
        "$id".into(),
        json!(format!(
            "https://localaistack.io/schemas/v1alpha1/{}.schema.json",
            kind.as_str().to_lowercase()
        )),
    );
    obj.insert("title".into(), json!(kind.as_str()));
    let props = obj
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .expect("resource has properties");
    props.insert(
        "apiVersion".into(),
        json!({"const": API_VERSION, "description": "Always localaistack.io/v1alpha1."}),
    );
    props.insert("kind".into(), json!({"const": kind.as_str()}));
    v
}

/// One schema that accepts any kind, for editors (`# yaml-language-server: $schema=...`).
///
/// Self-contained: every kind's schema is inlined under `$defs` (its own definitions merged in,
/// renamed `<Kind><Name>` where two kinds define a name differently), so every `$ref` is a
/// fragment of this document and validators resolve it offline. Relative references to the
/// per-kind files resolved against the remote `$id` instead, which fails without the network.
pub fn combined_schema() -> Value {
    let mut defs = Map::new();
    let mut branches = Vec::new();
    for k in Kind::ALL {
        let mut root = kind_schema(k);
        let obj = root.as_object_mut().expect("root schema is an object");
        let own = match obj.remove("$defs") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        obj.remove("$schema");
        obj.remove("$id");
        // Names another kind already defined differently get this kind's prefix.
        let renames: Vec<(String, String)> = own
            .iter()
            .filter(|(n, v)| defs.get(*n).is_some_and(|d| d != *v))
            .map(|(n, _)| (n.clone(), format!("{}{n}", k.as_str())))
            .collect();
        let mut own = Value::Object(own);
        for (from, to) in &renames {
            rename_ref(&mut root, from, to);
            rename_ref(&mut own, from, to);
        }
        for (n, v) in own.as_object().expect("object") {
            let n = renames
                .iter()
                .find(|(from, _)| from == n)
                .map_or(n.clone(), |(_, to)| to.clone());
            defs.insert(n, v.clone());
        }
        assert!(
            !defs.contains_key(k.as_str()),
            "a definition is named like the kind {k}"
        );
        defs.insert(k.as_str().to_string(), root);
        branches.push(json!({
            "if": {"properties": {"kind": {"const": k.as_str()}}, "required": ["kind"]},
            "then": {"$ref": format!("#/$defs/{}", k.as_str())}
        }));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://localaistack.io/schemas/v1alpha1/localaistack.schema.json",
        "title": "LocalAIStack object",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"enum": Kind::ALL.map(|k| k.as_str())}
        },
        "allOf": branches,
        "$defs": defs
    })
}

/// Rewrites every `{"$ref": "#/$defs/<from>"}` under `v` to point at `<to>`.
fn rename_ref(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && r.strip_prefix("#/$defs/") == Some(from)
            {
                *r = format!("#/$defs/{to}");
            }
            for (_, c) in m.iter_mut() {
                rename_ref(c, from, to);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rename_ref(c, from, to)),
        _ => {}
    }
}

/// The files of `crds/`: (file name, pretty JSON text).
pub fn crd_files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Kind::ALL
        .iter()
        .map(|k| {
            (
                format!("{}.schema.json", k.as_str().to_lowercase()),
                serde_json::to_string_pretty(&kind_schema(*k)).expect("json") + "\n",
            )
        })
        .collect();
    out.push((
        "localaistack.schema.json".into(),
        serde_json::to_string_pretty(&combined_schema()).expect("json") + "\n",
    ));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown kind {0:?}: known kinds are {known}", known = Kind::known_list())]
    UnknownKind(String),
    #[error("field {field:?} does not exist in {at}; fields there: {fields}")]
    UnknownField {
        field: String,
        at: String,
        fields: String,
    },
}

/// Documentation of a kind or a field path such as `module.spec.container.ports`.
pub fn explain(path: &str, recursive: bool) -> Result<String, ExplainError> {
    let mut segs = path.split('.');
    let kind_s = segs.next().unwrap_or_default();
    let kind = Kind::parse_loose(kind_s).ok_or_else(|| ExplainError::UnknownKind(kind_s.into()))?;
    let root = kind_schema(kind);
    let mut node = resolve(&root, &root);
    let mut at = kind.as_str().to_string();
    let mut field_name = None;
    for seg in segs {
        let props = properties(&root, &node);
        let Some(next) = props.get(seg) else {
            return Err(ExplainError::UnknownField {
                field: seg.into(),
                at,
                fields: props.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        node = item_schema(&root, &resolve(&root, next));
        at = format!("{at}.{seg}");
        field_name = Some((seg.to_string(), type_name(&root, next)));
    }
    let mut out = format!("KIND:     {}\nVERSION:  {API_VERSION}\n\n", kind.as_str());
    if let Some((name, ty)) = &field_name {
        out += &format!("FIELD: {name} <{ty}>\n\n");
    }
    out += "DESCRIPTION:\n";
    let desc = node
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("<no description>");
    for l in desc.lines() {
        out += &format!("  {l}\n");
    }
    let props = properties(&root, &node);
    if !props.is_empty() {
        out += "\nFIELDS:\n";
        let required = required(&node);
        fields(&root, &props, &required, recursive, 1, &mut out);
    }
    Ok(out)
}

fn fields(
    root: &Value,
    props: &Map<String, Value>,
    required: &[String],
    recursive: bool,
    depth: usize,
    out: &mut String,
) {
    let pad = "  ".repeat(depth);
    for (name, schema) in props {
        let req = if required.contains(name) {
            " -required-"
        } else {
            ""
        };
        *out += &format!("{pad}{name}\t<{}>{req}\n", type_name(root, schema));
        let resolved = item_schema(root, &resolve(root, schema));
        if recursive {
            if depth < 12 {
                let sub = properties(root, &resolved);
                fields(
                    root,
                    &sub,
                    &required_of(&resolved),
                    recursive,
                    depth + 1,
                    out,
                );
            }
        } else if let Some(d) = schema
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
        {
            *out += &format!("{pad}  {}\n\n", d.lines().next().unwrap_or_default());
        } else {
            *out += "\n";
        }
    }
}

fn required_of(v: &Value) -> Vec<String> {
    required(v)
}

fn required(v: &Value) -> Vec<String> {
    v.get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows `$ref` and single-branch `anyOf`/`allOf` (how schemars writes Option<T> and descriptions).
fn resolve(root: &Value, v: &Value) -> Value {
    let mut cur = v.clone();
    for _ in 0..16 {
        if let Some(r) = cur.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            let mut target = root["$defs"][name].clone();
            if let (Some(d), Some(t)) = (cur.get("description"), target.as_object_mut()) {
                t.insert("description".into(), d.clone());
            }
            cur = target;
            continue;
        }
        let branch = ["anyOf", "allOf", "oneOf"].iter().find_map(|k| {
            cur.get(*k).and_then(Value::as_array).and_then(|a| {
                let non_null: Vec<&Value> = a
                    .iter()
                    .filter(|b| b.get("type") != Some(&json!("null")))
                    .collect();
                (non_null.len() == 1).then(|| non_null[0].clone())
            })
        });
        match branch {
            Some(b) => {
                let desc = cur.get("description").cloned();
                cur = b;
                if let (Some(d), Some(o)) = (desc, cur.as_object_mut()) {
                    o.entry("description").or_insert(d);
                }
            }
            None => break,
        }
    }
    cur
}

/// For arrays and maps, the schema of their items, so that paths walk through them.
fn item_schema(root: &Value, v: &Value) -> Value {
    if let Some(items) = v.get("items") {
        let mut r = resolve(root, items);
        if let (Some(d), Some(o)) = (v.get("description"), r.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return r;
    }
    v.clone()
}

fn properties(root: &Value, v: &Value) -> Map<String, Value> {
    let r = resolve(root, v);
    r.get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn type_name(root: &Value, v: &Value) -> String {
    let r = resolve(root, v);
    let ty = match r.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|s| *s != "null")
            .unwrap_or("any")
            .to_string(),
        _ if r.get("enum").is_some() || r.get("oneOf").is_some() => "string".into(),
        _ => "any".into(),
    };
    match ty.as_str() {
        "array" => format!(
            "[]{}",
            r.get("items")
                .map(|i| type_name(root, i))
                .unwrap_or("any".into())
        ),
        "object" if r.get("properties").is_none() => "map[string]string".into(),
        _ => ty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_walks_into_arrays() {
        let out = explain("module.spec.container.ports", false).unwrap();
        assert!(out.contains("containerPort"), "{out}");
        assert!(out.contains("FIELD: ports <[]object>"), "{out}");
    }

    #[test]
    fn explain_unknown_field_lists_fields() {
        let e = explain("model.spec.nope", false).unwrap_err().to_string();
        assert!(e.contains("source"), "{e}");
    }
}
