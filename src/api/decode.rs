//! Strict, bounded decoding of desired state from files, directories and stdin.
//!
//! # Guarantees
//! - Every error names the file, the line and column, the field path and what was expected.
//! - Input is bounded: a document over [`MAX_DOC_BYTES`] or a call over [`MAX_CALL_BYTES`] is refused
//!   before it is parsed; alias bombs and deep nesting are refused by the YAML parser's own limits.
//! - Nothing is returned unless every document is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::meta::{API_VERSION, InputMeta, Kind};
use super::{Desired, ModelSpec, ModuleSpec, Origin, PolicySpec, Spec};

/// Largest single YAML/JSON document accepted.
pub const MAX_DOC_BYTES: usize = 1 << 20;
/// Largest total input of one call.
pub const MAX_CALL_BYTES: usize = 64 << 20;

/// One problem in the input, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `spec.container.ports[0].hostPort`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputErrors(pub Vec<InputError>);

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A named piece of input text.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn whole_file_error(file: &str, message: String) -> InputErrors {
    InputErrors(vec![InputError {
        file: file.to_string(),
        line: 1,
        column: 1,
        path: String::new(),
        message,
    }])
}

/// Reads PATH arguments: files, directories (`recursive` descends), and `-` for stdin.
/// Directory entries are read in sorted order; only `*.yaml`, `*.yml` and `*.json` are taken.
pub fn read_paths(paths: &[PathBuf], recursive: bool) -> Result<Vec<InputFile>, InputErrors> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for p in paths {
        if p.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .take(MAX_CALL_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| whole_file_error("<stdin>", format!("cannot read stdin: {e}")))?;
            push_file(&mut out, &mut total, "<stdin>".into(), buf)?;
            continue;
        }
        let meta = std::fs::metadata(p)
            .map_err(|e| whole_file_error(&p.display().to_string(), format!("cannot read: {e}")))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_dir(p, recursive, &mut files).map_err(|e| {
                whole_file_error(&p.display().to_string(), format!("cannot list: {e}"))
            })?;
            files.sort();
            for f in files {
                read_one(&f, &mut out, &mut total)?;
            }
        } else {
            read_one(p, &mut out, &mut total)?;
        }
    }
    Ok(out)
}

fn collect_dir(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if recursive {
                collect_dir(&path, recursive, out)?;
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads one file: only a regular file (a symlink is followed), opened with `O_NONBLOCK` so a FIFO
/// or device that appears between the check and the open cannot block, and read up to the bound.
fn read_one(p: &Path, out: &mut Vec<InputFile>, total: &mut usize) -> Result<(), InputErrors> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = p.display().to_string();
    let cannot = |e: std::io::Error| whole_file_error(&name, format!("cannot read: {e}"));
    let not_regular = |ft: std::fs::FileType| {
        whole_file_error(
            &name,
            format!(
                "not a regular file ({}): only regular files are read; remove it or rename it \
                 without a .yaml/.yml/.json suffix",
                file_type_name(ft)
            ),
        )
    };
    let meta = std::fs::metadata(p).map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .map_err(cannot)?;
    // The path may have been replaced between the check and the open: check what was opened.
    let meta = f.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let len = meta.len();
    if len as usize > MAX_CALL_BYTES {
        return Err(whole_file_error(
            &name,
            format!("file is {len} bytes; one call accepts at most {MAX_CALL_BYTES} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_CALL_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    push_file(out, total, name, bytes)
}

fn file_type_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn push_file(
    out: &mut Vec<InputFile>,
    total: &mut usize,
    name: String,
    bytes: Vec<u8>,
) -> Result<(), InputErrors> {
    *total += bytes.len();
    if *total > MAX_CALL_BYTES {
        return Err(whole_file_error(
            &name,
            format!(
                "input exceeds {MAX_CALL_BYTES} bytes in one call: split it into several applies"
            ),
        ));
    }
    out.push(InputFile { name, bytes });
    Ok(())
}

/// One YAML document cut out of a file, with the line its text starts on.
struct RawDoc<'a> {
    text: String,
    first_line: usize,
    file: &'a str,
}

/// Splits a stream on `---` lines the way kubectl does, keeping columns intact.
fn split_documents<'a>(file: &'a str, text: &str) -> Vec<RawDoc<'a>> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut first_line = 1;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace());
        let is_end = line.trim_end() == "...";
        if is_marker || is_end {
            docs.push(RawDoc {
                text: std::mem::take(&mut cur),
                first_line,
                file,
            });
            first_line = i + 1;
            if is_marker {
                // Keep what follows the marker on its line, at the same columns.
                cur.push_str("   ");
                cur.push_str(&line[3..]);
            } else {
                cur.push('\n');
            }
        } else {
            cur.push_str(line);
        }
    }
    docs.push(RawDoc {
        text: cur,
        first_line,
        file,
    });
    docs
}

/// A document as a user writes it, generic over the kind's spec.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: InputMeta,
    spec: S,
    /// Written by controllers: accepted (as `get -o yaml` prints it) and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

/// Refuses a file with a document over [`MAX_DOC_BYTES`] before anything is parsed (a caller that
/// must parse the whole input first, like the HTTP API, calls this before it does).
pub fn check_document_sizes(file: &InputFile) -> Result<(), InputErrors> {
    let text = String::from_utf8_lossy(&file.bytes);
    let errors: Vec<InputError> = split_documents(&file.name, &text)
        .into_iter()
        .filter(|d| d.text.len() > MAX_DOC_BYTES)
        .map(|d| InputError {
            file: file.name.clone(),
            line: d.first_line,
            column: 1,
            path: String::new(),
            message: format!(
                "document is {} bytes; at most {MAX_DOC_BYTES} bytes are accepted per document",
                d.text.len()
            ),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InputErrors(errors))
    }
}

/// Decodes every document of every file. Returns all errors, or all objects if there are none.
/// The same kind/name twice in one call is an error naming both places.
pub fn decode_files(files: &[InputFile]) -> Result<Vec<Desired>, InputErrors> {
    decode_files_skipping(files, |_| false).map(|(objects, _)| objects)
}

/// A file [`decode_files_skipping`] left out, and why (for a notice on stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: skipped: {}", self.file, self.reason)
    }
}

/// [`decode_files`], except that a file for which `skippable(name)` is true (a file found in a
/// directory rather than named) and whose documents are all someone else's — none has an
/// apiVersion of `localaistack.io` or a kind this version knows — is left out and returned as
/// [`Skipped`]. A file that claims to be ours and is wrong is still an error, and so is one that
/// does not parse.
pub fn decode_files_skipping(
    files: &[InputFile],
    skippable: impl Fn(&str) -> bool,
) -> Result<(Vec<Desired>, Vec<Skipped>), InputErrors> {
    let mut errors = Vec::new();
    let mut out: Vec<Desired> = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        if skippable(&f.name)
            && let Some(reason) = foreign(f)
        {
            skipped.push(Skipped {
                file: f.name.clone(),
                reason,
            });
            continue;
        }
        let text = match std::str::from_utf8(&f.bytes) {
            Ok(t) => t,
            Err(e) => {
                let (line, column) = line_col(&f.bytes[..e.valid_up_to()]);
                errors.push(InputError {
                    file: f.name.clone(),
                    line,
                    column,
                    path: String::new(),
                    message: format!(
                        "invalid UTF-8 at byte {}: desired state must be UTF-8 text",
                        e.valid_up_to()
                    ),
                });
                continue;
            }
        };
        // A UTF-8 byte order mark (some Windows editors write one) is not part of the text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for doc in split_documents(&f.name, text) {
            decode_doc(&doc, &mut out, &mut errors);
        }
    }
    let mut seen: BTreeMap<(Kind, String), &Origin> = BTreeMap::new();
    for d in &out {
        if let Some(first) = seen.insert((d.kind(), d.name.to_string()), &d.origin) {
            errors.push(InputError {
                file: d.origin.file.clone(),
                line: d.origin.line,
                column: 1,
                path: "metadata.name".into(),
                message: format!(
                    "{}/{} is defined twice in one call (first at {}:{})",
                    d.kind(),
                    d.name,
                    first.file,
                    first.line
                ),
            });
        }
    }
    errors.extend(port_conflicts(&out));
    if errors.is_empty() {
        Ok((out, skipped))
    } else {
        Err(InputErrors(errors))
    }
}

/// Whether a parsed document says it is ours: an apiVersion of our group, a kind we know, or a
/// `List` holding one.
fn claims_ours(v: &serde_yaml::Value) -> bool {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str());
    if s("apiVersion").is_some_and(|a| a.starts_with(API_GROUP_PREFIX)) {
        return true;
    }
    match s("kind") {
        Some("List") => v
            .get("items")
            .and_then(|i| i.as_sequence())
            .is_some_and(|items| items.iter().any(claims_ours)),
        Some(k) => Kind::ALL.iter().any(|known| known.as_str() == k),
        None => false,
    }
}

/// `apiVersion` prefix of every kind of ours.
const API_GROUP_PREFIX: &str = "localaistack.io/";

/// `Some(reason)` when every document of `f` parses and none claims to be ours.
fn foreign(f: &InputFile) -> Option<String> {
    let text = std::str::from_utf8(&f.bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs: Vec<serde_yaml::Value> = Vec::new();
    if f.name.ends_with(".json") {
        docs.push(serde_json::from_str(text).ok()?);
    } else {
        for doc in split_documents(&f.name, text) {
            if doc.text.len() > MAX_DOC_BYTES {
                return None;
            }
            let v: serde_yaml::Value = serde_yaml::from_str(&doc.text).ok()?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    if docs.is_empty() || docs.iter().any(claims_ours) {
        return None;
    }
    Some(format!(
        "not a LocalAIStack manifest (no apiVersion {API_VERSION} and no kind among {})",
        Kind::known_list()
    ))
}

/// The fixed host ports a Module binds, with the field that names each.
pub fn fixed_host_ports(m: &super::ModuleSpec) -> Vec<((u16, &'static str), String)> {
    let mut out = Vec::new();
    if let Some(c) = &m.container {
        for (i, p) in c.ports.iter().enumerate() {
            let (port, field) = match p.host_port {
                Some(h) => (h, format!("spec.container.ports[{i}].hostPort")),
                None => (
                    p.container_port,
                    format!("spec.container.ports[{i}].containerPort"),
                ),
            };
            if port != 0 {
                out.push(((port, p.protocol.as_str()), field));
            }
        }
    }
    if let Some(e) = &m.engine
        && e.port != 0
    {
        out.push(((e.port, "tcp"), "spec.engine.port".to_string()));
    }
    out
}

/// Two Modules of one call (or one Module twice) binding the same fixed host port and protocol.
fn port_conflicts(objects: &[Desired]) -> Vec<InputError> {
    let mut seen: BTreeMap<(u16, &str), (String, &Origin)> = BTreeMap::new();
    let mut errors = Vec::new();
    for d in objects {
        let Spec::Module(m) = &d.spec else { continue };
        for (key, field) in fixed_host_ports(m) {
            let who = format!("module/{}", d.name);
            match seen.get(&key) {
                Some((first, at)) => errors.push(InputError {
                    file: d.origin.file.clone(),
                    line: d.origin.line,
                    column: 1,
                    path: field,
                    message: format!(
                        "host port {}/{} is also bound by {first} ({}:{}): each fixed host port can be bound once",
                        key.0, key.1, at.file, at.line
                    ),
                }),
                None => {
                    seen.insert(key, (who, &d.origin));
                }
            }
        }
    }
    errors
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// Decodes one document into `out` (a `List` into one object per item), or its errors into
/// `errors`.
fn decode_doc(doc: &RawDoc<'_>, out: &mut Vec<Desired>, errors: &mut Vec<InputError>) {
    let list = (doc.text.len() <= MAX_DOC_BYTES)
        .then(|| serde_yaml::from_str::<serde_yaml::Value>(&doc.text).ok())
        .flatten()
        .filter(|v| {
            v.get("kind").and_then(|k| k.as_str()) == Some("List")
                && v.get("apiVersion").and_then(|a| a.as_str()) == Some("v1")
        });
    let Some(list) = list else {
        match decode_object(doc) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        return;
    };
    decode_list(doc, &list, out, errors);
}

/// A kubectl `List` (`apiVersion: v1, kind: List, items: [...]`, as `get -o yaml` prints several
/// objects): each item is decoded as a document of its own; errors name `items[N].field` at the
/// item's own line when the list is block YAML (else at the line of `items`).
fn decode_list(
    doc: &RawDoc<'_>,
    list: &serde_yaml::Value,
    out: &mut Vec<Desired>,
    errors: &mut Vec<InputError>,
) {
    let items_at = locate(&doc.text, &["items"]).unwrap_or((first_content_line(&doc.text), 1));
    let at = |line: usize, column: usize, path: String, message: String| InputError {
        file: doc.file.to_string(),
        line: doc.first_line + line.saturating_sub(1),
        column,
        path,
        message,
    };
    if let Some(m) = list.as_mapping() {
        for k in m.keys() {
            let k = k.as_str().unwrap_or_default();
            if !matches!(k, "apiVersion" | "kind" | "items" | "metadata") {
                let (l, c) = locate(&doc.text, &[k]).unwrap_or(items_at);
                errors.push(at(
                    l,
                    c,
                    k.to_string(),
                    "unknown field of a List: expected apiVersion, kind, metadata and items".into(),
                ));
            }
        }
    }
    let items = match list.get("items") {
        Some(serde_yaml::Value::Sequence(items)) => items,
        Some(serde_yaml::Value::Null) | None => return,
        Some(_) => {
            errors.push(at(
                items_at.0,
                items_at.1,
                "items".into(),
                "expected a list of objects".into(),
            ));
            return;
        }
    };
    let blocks = item_blocks(&doc.text);
    for (i, item) in items.iter().enumerate() {
        // The item's own text, columns shifted, when it can be cut out of block YAML and reads
        // back as the same value; else the item re-serialized, positioned at `items`.
        let cut = blocks.get(i).filter(|b| {
            blocks.len() == items.len()
                && serde_yaml::from_str::<serde_yaml::Value>(&b.text)
                    .ok()
                    .as_ref()
                    == Some(item)
        });
        let (text, first_line, shift) = match cut {
            Some(b) => (b.text.clone(), doc.first_line + b.first_index, b.shift),
            None => (
                serde_yaml::to_string(item).unwrap_or_default(),
                doc.first_line + items_at.0 - 1,
                0,
            ),
        };
        let sub = RawDoc {
            text,
            first_line,
            file: doc.file,
        };
        let mut errs = Vec::new();
        match decode_object(&sub) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => errs.push(InputError {
                file: doc.file.to_string(),
                line: first_line,
                column: 1,
                path: String::new(),
                message:
                    "an empty item: expected an object with apiVersion, kind, metadata and spec"
                        .into(),
            }),
            Err(e) => errs.push(e),
        }
        for mut e in errs {
            if cut.is_some() {
                e.column += shift;
            } else {
                e.line = doc.first_line + items_at.0 - 1;
                e.column = items_at.1;
            }
            e.path = if e.path.is_empty() {
                format!("items[{i}]")
            } else {
                format!("items[{i}].{}", e.path)
            };
            errors.push(e);
        }
    }
}

/// One item of a block-style `items:` sequence, de-indented.
struct ItemBlock {
    text: String,
    /// 0-based index of the item's first line in the document.
    first_index: usize,
    /// Columns removed from every line.
    shift: usize,
}

/// Cuts the items of a top-level block sequence `items:` out of `text` (`- ` at one indent).
fn item_blocks(text: &str) -> Vec<ItemBlock> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == "items:") else {
        return Vec::new();
    };
    let mut blocks: Vec<ItemBlock> = Vec::new();
    let mut indent: Option<usize> = None;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start_matches(' ');
        let ind = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            if let Some(b) = blocks.last_mut() {
                b.text.push('\n');
            }
            continue;
        }
        let item_indent = *indent.get_or_insert(ind);
        if ind == item_indent && (trimmed.starts_with("- ") || trimmed == "-") {
            let shift = ind + 2;
            let rest = trimmed.get(2..).unwrap_or("");
            blocks.push(ItemBlock {
                text: format!("{rest}\n"),
                first_index: i,
                shift,
            });
        } else if ind > item_indent
            && let Some(b) = blocks.last_mut()
        {
            b.text.push_str(line.get(b.shift..).unwrap_or(""));
            b.text.push('\n');
        } else {
            break;
        }
    }
    blocks
}

fn decode_object(doc: &RawDoc<'_>) -> Result<Option<Desired>, InputError> {
    let err_at = |line: usize, column: usize, path: &str, message: String| InputError {
        file: doc.file.to_string(),
        line: doc.first_line + line.saturating_sub(1),
        column,
        path: path.to_string(),
        message,
    };
    if doc.text.len() > MAX_DOC_BYTES {
        return Err(err_at(
            1,
            1,
            "",
            format!(
                "document is {} bytes; at most {MAX_DOC_BYTES} bytes are accepted per document",
                doc.text.len()
            ),
        ));
    }
    let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            let (l, c) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            return Err(err_at(l, c, "", clean_message(&e.to_string(), "")));
        }
    };
    let map = match &value {
        serde_yaml::Value::Null => return Ok(None),
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            return Err(err_at(
                first_content_line(&doc.text),
                1,
                "",
                "expected an object with apiVersion, kind, metadata and spec".into(),
            ));
        }
    };
    let start = first_content_line(&doc.text);
    let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let at_key = |k: &str| locate(&doc.text, &[k]).unwrap_or((1, 1));
    let api_version = field("apiVersion").ok_or_else(|| {
        err_at(
            start,
            1,
            "apiVersion",
            format!("missing: expected apiVersion: {API_VERSION}"),
        )
    })?;
    if api_version != API_VERSION {
        let (l, c) = at_key("apiVersion");
        return Err(err_at(
            l,
            c,
            "apiVersion",
            format!("unknown apiVersion {api_version:?}: expected {API_VERSION}"),
        ));
    }
    let kind_s = field("kind").ok_or_else(|| {
        err_at(
            start,
            1,
            "kind",
            format!("missing: expected one of {}", Kind::known_list()),
        )
    })?;
    let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_s) else {
        let (l, c) = at_key("kind");
        return Err(err_at(
            l,
            c,
            "kind",
            format!(
                "unknown kind {kind_s:?}: known kinds are {}",
                Kind::known_list()
            ),
        ));
    };
    let meta_line = locate(&doc.text, &["metadata", "name"])
        .or_else(|| locate(&doc.text, &["metadata"]))
        .map_or(start, |(l, _)| l);
    let origin = Origin {
        file: doc.file.to_string(),
        line: doc.first_line + meta_line - 1,
    };
    let typed = |d: Result<(InputMeta, Spec), InputError>| d;
    let (meta, spec) = typed(match kind {
        Kind::Model => parse_typed::<ModelSpec>(doc).map(|(m, s)| (m, Spec::Model(s))),
        Kind::Module => parse_typed::<ModuleSpec>(doc).map(|(m, s)| (m, Spec::Module(s))),
        Kind::Policy => parse_typed::<PolicySpec>(doc).map(|(m, s)| (m, Spec::Policy(s))),
    })?;
    meta.validate()
        .and_then(|()| validate_spec(&spec))
        .map_err(|(path, message)| {
            // The deepest key that can be found (flow mappings hide the last ones).
            let keys = path_keys(&path);
            let (l, c) = (1..=keys.len())
                .rev()
                .find_map(|n| locate(&doc.text, &keys[..n]))
                .unwrap_or((start, 1));
            err_at(l, c, &path, message)
        })?;
    let mut annotations = meta.annotations;
    annotations.remove(super::meta::BUILT_IN_ANNOTATION);
    Ok(Some(Desired {
        name: meta.name,
        labels: meta.labels,
        annotations,
        spec,
        origin,
        resource_version: meta.resource_version.map(|r| r.0),
    }))
}

/// Decodes every document of one file as `kind` — for formats outside desired state, such as the
/// module catalog's manifests — with the same strictness and the same `file:line:col: path: message`
/// errors. `validate` checks what serde cannot and returns a field path and a message. Returns the
/// name, the spec and the line of `metadata.name` of each document, or every error.
pub fn decode_kind<S: DeserializeOwned>(
    file: &InputFile,
    kind: &str,
    validate: impl Fn(&S) -> Result<(), (String, String)>,
) -> Result<Vec<(super::ObjectName, S, usize)>, InputErrors> {
    let text = std::str::from_utf8(&file.bytes)
        .map_err(|_| whole_file_error(&file.name, "invalid UTF-8: expected UTF-8 text".into()))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(&file.name, text) {
        let err_at = |line: usize, column: usize, path: &str, message: String| InputError {
            file: doc.file.to_string(),
            line: doc.first_line + line.saturating_sub(1),
            column,
            path: path.to_string(),
            message,
        };
        if doc.text.len() > MAX_DOC_BYTES {
            errors.push(err_at(
                1,
                1,
                "",
                format!("document is over {MAX_DOC_BYTES} bytes"),
            ));
            continue;
        }
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
            Ok(v) => v,
            Err(e) => {
                let (l, c) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                errors.push(err_at(l, c, "", clean_message(&e.to_string(), "")));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let start = first_content_line(&doc.text);
        let got_kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let got_api = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if got_api != API_VERSION {
            let (l, c) = locate(&doc.text, &["apiVersion"]).unwrap_or((start, 1));
            errors.push(err_at(
                l,
                c,
                "apiVersion",
                format!("expected apiVersion: {API_VERSION}"),
            ));
            continue;
        }
        if got_kind != kind {
            let (l, c) = locate(&doc.text, &["kind"]).unwrap_or((start, 1));
            errors.push(err_at(
                l,
                c,
                "kind",
                format!("expected kind: {kind}, found {got_kind:?}"),
            ));
            continue;
        }
        let (meta, spec) = match parse_typed::<S>(&doc) {
            Ok(x) => x,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Err((path, message)) = validate(&spec) {
            // The deepest key that can be found (flow mappings hide the last ones).
            let keys = path_keys(&path);
            let (l, c) = (1..=keys.len())
                .rev()
                .find_map(|n| locate(&doc.text, &keys[..n]))
                .unwrap_or((start, 1));
            errors.push(err_at(l, c, &path, message));
            continue;
        }
        let line = locate(&doc.text, &["metadata", "name"]).map_or(start, |(l, _)| l);
        out.push((meta.name, spec, doc.first_line + line - 1));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(InputErrors(errors))
    }
}

fn validate_spec(spec: &Spec) -> Result<(), (String, String)> {
    match spec {
        Spec::Module(m) => m.validate(),
        Spec::Model(_) => Ok(()),
        Spec::Policy(p) => {
            let mut names = std::collections::BTreeSet::new();
            for (i, t) in p.tiers.iter().enumerate() {
                if !names.insert(t.name.as_str()) {
                    return Err((
                        format!("spec.tiers[{i}].name"),
                        format!("tier {:?} appears twice", t.name),
                    ));
                }
                if let Some(w) = &t.when {
                    w.validate(&format!("spec.tiers[{i}].when"))?;
                }
            }
            if p.tiers.is_empty() {
                return Err((
                    "spec.tiers".into(),
                    "a Policy needs at least one tier".into(),
                ));
            }
            Ok(())
        }
    }
}

fn parse_typed<S: DeserializeOwned>(doc: &RawDoc<'_>) -> Result<(InputMeta, S), InputError> {
    let de = serde_yaml::Deserializer::from_str(&doc.text);
    match serde_path_to_error::deserialize::<_, Manifest<S>>(de) {
        Ok(m) => Ok((m.metadata, m.spec)),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let serde_pos = inner
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            // serde_yaml positions custom errors at the previous key; find the field itself.
            let (l, c) = match locate(&doc.text, &path_keys(&path)) {
                Some(found) if found >= serde_pos => found,
                _ => serde_pos,
            };
            Err(InputError {
                file: doc.file.to_string(),
                line: doc.first_line + l.saturating_sub(1),
                column: c,
                message: clean_message(&inner.to_string(), &path),
                path,
            })
        }
    }
}

/// Removes the position and path serde_yaml adds, since we print our own.
fn clean_message(msg: &str, path: &str) -> String {
    let mut m = msg;
    if let Some(i) = m.rfind(" at line ") {
        m = &m[..i];
    }
    // serde_yaml prefixes the path of the enclosing mapping: any prefix of ours.
    let segs: Vec<&str> = path.split('.').collect();
    for n in (1..=segs.len()).rev() {
        let prefix = segs[..n].join(".");
        if let Some(rest) = m.strip_prefix(&prefix).and_then(|r| r.strip_prefix(": ")) {
            m = rest;
            break;
        }
    }
    m.to_string()
}

/// Splits `spec.tiers[0].when` into the keys `locate` searches for.
fn path_keys(path: &str) -> Vec<&str> {
    path.split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first line that is neither blank nor a comment (1-based), for document-level errors.
fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .map_or(1, |i| i + 1)
}

/// Finds the line and column of a key path in YAML text, by indentation. Best effort: used only to
/// point at fields whose errors serde cannot position.
fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut min_indent = 0usize;
    let mut start = 0usize;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for seg in path {
        let key = seg.split('[').next().unwrap_or(seg);
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start_matches([' ', '-']);
            let indent = line.len() - trimmed.len();
            if indent < min_indent && !trimmed.is_empty() && found.is_some() {
                break;
            }
            if trimmed.starts_with(&format!("{key}:")) {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some((i + 1, indent + 1));
        start = i + 1;
        min_indent = indent + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Vec<Desired>, InputErrors> {
        decode_files(&[InputFile {
            name: "t.yaml".into(),
            bytes: text.as_bytes().to_vec(),
        }])
    }

    #[test]
    fn splits_documents_and_keeps_lines() {
        let text = "---\napiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: a}\nspec: {source: /x}\n---\n\napiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {name: b, bogus: 1}\nspec: {source: /x}\n";
        let err = decode(text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 10, "{}", err);
        assert!(err.0[0].message.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn locate_finds_nested_keys() {
        let t = "a:\n  b:\n    c: 1\nspec:\n  native:\n    command: []\n";
        assert_eq!(locate(t, &["spec", "native", "command"]), Some((6, 5)));
    }
}
