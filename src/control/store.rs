//! The state store: a small API over one SQLite file.
//!
//! # Guarantees
//! - WAL, foreign keys on, numbered migrations applied on open; the file is created mode 0600.
//! - One transaction per logical write (`BEGIN IMMEDIATE`): an apply is recorded whole or not at all.
//! - Every write to an object bumps its `resourceVersion` (one counter for the whole store, like etcd);
//!   `generation` is bumped only when `spec` changes. Writes compare-and-swap on `resourceVersion`.
//! - An apply or delete that changes desired state records one numbered stack generation with the
//!   full desired state; one that changes nothing writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{API_VERSION, ConditionStatus, Desired, Kind, ObjectName, Spec};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create state database {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state database is at schema version {found}, newer than this lasctl understands ({known}): upgrade lasctl"
    )]
    TooNew { found: i64, known: i64 },
    #[error("{kind}/{name} not found")]
    NotFound { kind: Kind, name: String },
    #[error(
        "conflict on {kind}/{name}: resourceVersion is {actual}, the request expected {expected}; read the object again and retry"
    )]
    Conflict {
        kind: Kind,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{kind}/{name} is being deleted (waiting for its finalizers): apply it again once it is gone"
    )]
    Deleting { kind: Kind, name: String },
    #[error(
        "pruning {source_path} would delete all {count} objects recorded for it; pass --allow-empty to do that on purpose"
    )]
    PruneEmpty { source_path: String, count: usize },
    #[error("generation {0} does not exist; see lasctl history")]
    NoSuchGeneration(u64),
    #[error("there is no earlier generation to roll back to")]
    NothingToRollBack,
    #[error(
        "not applied: {key} is recorded (a suspended source; `lasctl resume source PATH` resumes it)"
    )]
    Suspended { key: String },
    #[error("stored object {kind}/{name} is unreadable: {message}")]
    Corrupt {
        kind: String,
        name: String,
        message: String,
    },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn is_busy(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

const MIGRATIONS: &[&str] = &[
    // 1: objects, generations, inventory, events, native process records, small records.
    r#"
    CREATE TABLE objects (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT NOT NULL UNIQUE,
        generation INTEGER NOT NULL,
        resource_version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        deleted_at TEXT,
        finalizers TEXT NOT NULL DEFAULT '[]',
        labels TEXT NOT NULL DEFAULT '{}',
        annotations TEXT NOT NULL DEFAULT '{}',
        spec TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('resource_version', 0);
    CREATE TABLE generations (
        number INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL,
        added INTEGER NOT NULL,
        changed INTEGER NOT NULL,
        removed INTEGER NOT NULL,
        state TEXT NOT NULL
    );
    CREATE TABLE inventory (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE INDEX inventory_by_source ON inventory(source);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        uid TEXT,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_object ON events(kind, name, id);
    CREATE TABLE native_processes (
        owner TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        start_time INTEGER NOT NULL,
        spec_hash TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE TABLE records (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL);
    "#,
    // 2: events aggregated like Kubernetes': one row per object, type, reason and normalised
    // message (`series`), with a count and the first time; a repeat moves the row to a new id.
    r#"
    ALTER TABLE events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE events ADD COLUMN first_time TEXT;
    ALTER TABLE events ADD COLUMN series TEXT;
    UPDATE events SET first_time = time;
    CREATE INDEX events_by_series ON events(kind, name, reason, series);
    "#,
    // 3: where an event comes from when not from the controllers (`published`: the API's
    // `POST /api/v1/events`; `eventBus`: the event bus about its sinks).
    r#"
    ALTER TABLE events ADD COLUMN source TEXT;
    "#,
    // 4: workflow runs, each a JSON record rewritten as it progresses (control::workflows).
    r#"
    CREATE TABLE workflow_runs (
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        plugin TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX workflow_runs_by_workflow ON workflow_runs(workflow, created_at);
    CREATE INDEX workflow_runs_by_state ON workflow_runs(state);
    "#,
];

/// An object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub kind: Kind,
    pub name: ObjectName,
    pub uid: String,
    pub generation: u64,
    pub resource_version: u64,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub finalizers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
    pub status: Value,
}

impl StoredObject {
    /// The object as users see it (`-o json|yaml`).
    pub fn to_json(&self) -> Value {
        let mut meta = json!({
            "name": self.name.as_str(),
            "uid": self.uid,
            "generation": self.generation,
            "resourceVersion": self.resource_version.to_string(),
            "creationTimestamp": self.created_at,
        });
        let m = meta.as_object_mut().expect("object");
        if !self.labels.is_empty() {
            m.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), json!(self.annotations));
        }
        if let Some(d) = &self.deleted_at {
            m.insert("deletionTimestamp".into(), json!(d));
        }
        if !self.finalizers.is_empty() {
            m.insert("finalizers".into(), json!(self.finalizers));
        }
        let mut obj = json!({
            "apiVersion": API_VERSION,
            "kind": self.kind.as_str(),
            "metadata": meta,
            "spec": self.spec,
        });
        if self.status.as_object().is_some_and(|s| !s.is_empty()) {
            obj["status"] = self.status.clone();
        }
        obj
    }

    /// The typed spec; stored specs were validated on the way in.
    pub fn typed_spec(&self) -> Result<Spec> {
        Spec::from_json(self.kind, self.spec.clone()).map_err(|e| StoreError::Corrupt {
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            message: e.to_string(),
        })
    }

    /// The status of a condition, if present.
    pub fn condition(&self, type_: &str) -> Option<(ConditionStatus, String, String)> {
        let conds = self.status.get("conditions")?.as_array()?;
        let c = conds
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
        let status = match c.get("status")?.as_str()? {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        };
        let s = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some((status, s("reason"), s("message")))
    }

    pub fn observed_generation(&self) -> Option<u64> {
        self.status
            .get("observedGeneration")
            .and_then(Value::as_u64)
    }
}

/// One object to apply, with the source (PATH argument) it came from.
#[derive(Debug, Clone)]
pub struct ApplyItem {
    pub desired: Desired,
    pub source: String,
    /// When set, the write fails with a conflict unless the object is at this resourceVersion.
    pub expected_resource_version: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyRequest {
    pub items: Vec<ApplyItem>,
    /// Sources whose recorded objects missing from `items` are deleted.
    pub prune_sources: Vec<String>,
    pub allow_empty: bool,
    /// Compute the outcome without writing.
    pub dry_run: bool,
    /// How the generation is described in `history` (e.g. the PATHs).
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Pruned,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectChange {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// The stack generation recorded, if anything changed.
    pub generation: Option<u64>,
    pub changes: Vec<ObjectChange>,
}

impl Outcome {
    fn counts(&self) -> (usize, usize, usize) {
        let n = |a: &[Action]| {
            self.changes
                .iter()
                .filter(|c| a.contains(&c.action))
                .count()
        };
        (
            n(&[Action::Created]),
            n(&[Action::Configured]),
            n(&[Action::Pruned, Action::Deleted]),
        )
    }
    pub fn changed_anything(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationSummary {
    pub number: u64,
    pub time: String,
    pub source: String,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

/// One object inside a generation's recorded desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotObject {
    pub kind: Kind,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// One row of the event log: a series of events of one object with the same type, reason and
/// message up to ids, numbers and hex strings (see [`event_series`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Moves to a new, higher id with every repeat (a stream resumed after an id sees it again).
    pub id: i64,
    /// When it last happened (= `lastTimestamp`).
    pub time: String,
    pub kind: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub reason: String,
    /// The latest message of the series.
    pub message: String,
    /// How many times it happened.
    pub count: u64,
    pub first_timestamp: String,
    pub last_timestamp: String,
    /// `published` (`POST /api/v1/events`) or `eventBus`; absent for the system's own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The series key of an event message: runs of digits become `#`, and hex-looking words
/// (container ids, digests) become `<hex>`, so "container 3f2a9c1d0e4b exited
/// with code 137 (restart 4)" and the same with other ids and counts are one series.
pub fn event_series(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        // Ids: 8+ hex characters, or 6+ with a digit (so short words like "added" stay).
        let hexlike = word.chars().all(|c| c.is_ascii_hexdigit())
            && (word.len() >= 8 || (word.len() >= 6 && word.chars().any(|c| c.is_ascii_digit())));
        if hexlike {
            out.push_str("<hex>");
        } else {
            let mut in_digits = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('#');
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    out.push(c);
                }
            }
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A handle on `state.db`. Cheap to open; not shared between threads (open one per task).
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Create {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Create {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Two processes opening a new file at the same moment (the daemon and `lasctl wait`, say)
        // can see SQLITE_BUSY where SQLite does not use the busy handler (switching to WAL, WAL
        // recovery): retry the whole opening sequence for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let conn = loop {
            match Self::open_once(path) {
                Ok(c) => break c,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(StoreError::Sql(source)) => return Err(open_err(source)),
                Err(e) => return Err(e),
            }
        };
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn open_once(path: &Path) -> Result<Connection> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Self::migrate(&mut conn)?;
        Ok(conn)
    }

    fn migrate(conn: &mut Connection) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        if version == known {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read inside the write lock: another process may have migrated meanwhile.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest resourceVersion handed out so far: a cheap "did anything change?" check.
    pub fn current_resource_version(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT value FROM counters WHERE name = 'resource_version'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))?)
    }

    // ---- reading ----

    const COLUMNS: &'static str = "kind, name, uid, generation, resource_version, created_at, deleted_at, finalizers, labels, annotations, spec, status";

    fn row_to_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObject> {
        let kind_s: String = r.get(0)?;
        let name_s: String = r.get(1)?;
        let bad = |what: &str| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("stored {what} of {kind_s}/{name_s} is unreadable").into(),
            )
        };
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind_s)
            .ok_or_else(|| bad("kind"))?;
        let name = ObjectName::new(&name_s).map_err(|_| bad("name"))?;
        let parse = |i: usize, what: &str| -> rusqlite::Result<Value> {
            let s: String = r.get(i)?;
            serde_json::from_str(&s).map_err(|_| bad(what))
        };
        let to_map = |v: Value| -> BTreeMap<String, String> {
            serde_json::from_value(v).unwrap_or_default()
        };
        Ok(StoredObject {
            kind,
            name,
            uid: r.get(2)?,
            generation: r.get::<_, i64>(3)? as u64,
            resource_version: r.get::<_, i64>(4)? as u64,
            created_at: r.get(5)?,
            deleted_at: r.get(6)?,
            finalizers: serde_json::from_value(parse(7, "finalizers")?).unwrap_or_default(),
            labels: to_map(parse(8, "labels")?),
            annotations: to_map(parse(9, "annotations")?),
            spec: parse(10, "spec")?,
            status: parse(11, "status")?,
        })
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<StoredObject> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM objects WHERE kind = ?1 AND name = ?2",
                    Self::COLUMNS
                ),
                params![kind.as_str(), name],
                Self::row_to_object,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.to_string(),
            })
    }

    /// Objects of one kind (or all kinds), ordered by kind and name, optionally filtered by labels.
    pub fn list(
        &self,
        kind: Option<Kind>,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<StoredObject>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM objects WHERE (?1 IS NULL OR kind = ?1) ORDER BY kind, name",
            Self::COLUMNS
        ))?;
        let rows = stmt.query_map(params![kind.map(Kind::as_str)], Self::row_to_object)?;
        let mut out = Vec::new();
        for r in rows {
            let o = r?;
            if selector.iter().all(|(k, v)| o.labels.get(k) == Some(v)) {
                out.push(o);
            }
        }
        Ok(out)
    }

    // ---- desired state ----

    /// Applies desired state in one transaction. See the module docs for the guarantees.
    pub fn apply(&mut self, req: &ApplyRequest) -> Result<Outcome> {
        self.apply_unless_record(req, None)
    }

    /// [`Store::apply`], refused with [`StoreError::Suspended`] when the record `guard` exists at the
    /// moment of writing (checked inside the write transaction, so a suspension recorded by another
    /// process is never overtaken).
    pub fn apply_unless_record(
        &mut self,
        req: &ApplyRequest,
        guard: Option<&str>,
    ) -> Result<Outcome> {
        // Fast path: a read-only comparison. An unchanged re-apply writes nothing.
        let plan = Self::plan_apply(&self.conn, req)?;
        if req.dry_run || (!plan.writes_anything()) {
            return Ok(plan.outcome(None));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = guard {
            let present: Option<i64> = tx
                .query_row("SELECT 1 FROM records WHERE key = ?1", [key], |r| r.get(0))
                .optional()?;
            if present.is_some() {
                return Err(StoreError::Suspended {
                    key: key.to_string(),
                });
            }
        }
        // Re-plan under the write lock: another writer may have committed since the read.
        let plan = Self::plan_apply(&tx, req)?;
        let generation = Self::execute(&tx, &plan, &req.description)?;
        tx.commit()?;
        Ok(plan.outcome(generation))
    }

    fn plan_apply(conn: &Connection, req: &ApplyRequest) -> Result<Plan> {
        let existing = Self::existing_index(conn)?;
        let inventory = Self::inventory(conn)?;
        let mut plan = Plan::default();
        let mut present: BTreeSet<(Kind, String)> = BTreeSet::new();
        for item in &req.items {
            let d = &item.desired;
            let key = (d.kind(), d.name.to_string());
            present.insert(key.clone());
            let spec = d.spec.to_json();
            let step = match existing.get(&key) {
                None => {
                    if let Some(rv) = item.expected_resource_version
                        && rv != 0
                    {
                        return Err(StoreError::Conflict {
                            kind: key.0,
                            name: key.1,
                            expected: rv,
                            actual: 0,
                        });
                    }
                    Step::Create
                }
                Some(cur) => {
                    if let Some(rv) = item.expected_resource_version
                        && rv != cur.resource_version
                    {
                        return Err(StoreError::Conflict {
                            kind: key.0,
                            name: key.1,
                            expected: rv,
                            actual: cur.resource_version,
                        });
                    }
                    let spec_changed = cur.spec != spec;
                    let meta_changed = cur.labels != d.labels || cur.annotations != d.annotations;
                    if cur.deleted_at.is_some() {
                        return Err(StoreError::Deleting {
                            kind: key.0,
                            name: key.1,
                        });
                    }
                    if spec_changed || meta_changed {
                        Step::Update {
                            resource_version: cur.resource_version,
                            bump_generation: spec_changed,
                        }
                    } else {
                        Step::Keep
                    }
                }
            };
            let inventory_changed = inventory.get(&key) != Some(&item.source);
            plan.items.push(PlannedItem {
                kind: key.0,
                name: key.1,
                labels: d.labels.clone(),
                annotations: d.annotations.clone(),
                spec,
                source: item.source.clone(),
                step,
                inventory_changed,
            });
        }
        for source in &req.prune_sources {
            let recorded: Vec<&(Kind, String)> = inventory
                .iter()
                .filter(|(_, s)| *s == source)
                .map(|(k, _)| k)
                .collect();
            let applied_here = req.items.iter().filter(|i| &i.source == source).count();
            if applied_here == 0 && !recorded.is_empty() && !req.allow_empty {
                return Err(StoreError::PruneEmpty {
                    source_path: source.clone(),
                    count: recorded.len(),
                });
            }
            for key in recorded {
                if !present.contains(key)
                    && existing.get(key).is_some_and(|e| e.deleted_at.is_none())
                {
                    plan.prune.push(key.clone());
                }
            }
        }
        Ok(plan)
    }

    fn existing_index(conn: &Connection) -> Result<HashMap<(Kind, String), StoredObject>> {
        let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM objects", Self::COLUMNS))?;
        let rows = stmt.query_map([], Self::row_to_object)?;
        let mut out = HashMap::new();
        for r in rows {
            let o = r?;
            out.insert((o.kind, o.name.to_string()), o);
        }
        Ok(out)
    }

    fn inventory(conn: &Connection) -> Result<HashMap<(Kind, String), String>> {
        let mut stmt = conn.prepare_cached("SELECT kind, name, source FROM inventory")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = HashMap::new();
        for r in rows {
            let (k, n, s) = r?;
            if let Some(kind) = Kind::parse_loose(&k) {
                out.insert((kind, n), s);
            }
        }
        Ok(out)
    }

    fn next_rv(tx: &Connection) -> Result<u64> {
        Ok(tx.query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'resource_version' RETURNING value",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Carries out a plan inside a transaction; returns the generation recorded, if any.
    fn execute(tx: &Connection, plan: &Plan, description: &str) -> Result<Option<u64>> {
        let t = now();
        for it in &plan.items {
            match it.step {
                Step::Create => {
                    let rv = Self::next_rv(tx)?;
                    let uid = uuid::Uuid::new_v4().to_string();
                    tx.prepare_cached(
                        "INSERT INTO objects (kind, name, uid, generation, resource_version, created_at, labels, annotations, spec)
                         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        it.kind.as_str(),
                        it.name,
                        uid,
                        rv as i64,
                        t,
                        json_text(&it.labels),
                        json_text(&it.annotations),
                        json_text(&it.spec)
                    ])?;
                    Self::event_tx(
                        tx,
                        it.kind,
                        &it.name,
                        Some(&uid),
                        EventType::Normal,
                        "Created",
                        "created by apply",
                    )?;
                }
                Step::Update {
                    resource_version,
                    bump_generation,
                } => {
                    let rv = Self::next_rv(tx)?;
                    let n = tx
                        .prepare_cached(
                            "UPDATE objects SET labels = ?1, annotations = ?2, spec = ?3, resource_version = ?4,
                                generation = generation + ?5
                             WHERE kind = ?6 AND name = ?7 AND resource_version = ?8",
                        )?
                        .execute(params![
                            json_text(&it.labels),
                            json_text(&it.annotations),
                            json_text(&it.spec),
                            rv as i64,
                            bump_generation as i64,
                            it.kind.as_str(),
                            it.name,
                            resource_version as i64
                        ])?;
                    if n != 1 {
                        return Err(StoreError::Conflict {
                            kind: it.kind,
                            name: it.name.clone(),
                            expected: resource_version,
                            actual: 0,
                        });
                    }
                    let msg = if bump_generation {
                        "spec changed by apply"
                    } else {
                        "metadata changed by apply"
                    };
                    Self::event_tx(
                        tx,
                        it.kind,
                        &it.name,
                        None,
                        EventType::Normal,
                        "Configured",
                        msg,
                    )?;
                }
                Step::Keep => {}
            }
            if it.inventory_changed {
                tx.prepare_cached(
                    "INSERT INTO inventory (kind, name, source) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, name) DO UPDATE SET source = excluded.source",
                )?
                .execute(params![it.kind.as_str(), it.name, it.source])?;
            }
        }
        for (kind, name) in &plan.prune {
            Self::mark_deleted(tx, *kind, name, "Pruned", "pruned: no longer in its source")?;
        }
        if plan.changes_desired_state() {
            let o = plan.outcome(None);
            let (a, c, r) = o.counts();
            Ok(Some(Self::record_generation(tx, description, a, c, r)?))
        } else {
            Ok(None)
        }
    }

    fn mark_deleted(
        tx: &Connection,
        kind: Kind,
        name: &str,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let rv = Self::next_rv(tx)?;
        tx.execute(
            "UPDATE objects SET deleted_at = COALESCE(deleted_at, ?1), resource_version = ?2 WHERE kind = ?3 AND name = ?4",
            params![now(), rv as i64, kind.as_str(), name],
        )?;
        tx.execute(
            "DELETE FROM objects WHERE kind = ?1 AND name = ?2 AND finalizers = '[]'",
            params![kind.as_str(), name],
        )?;
        tx.execute(
            "DELETE FROM inventory WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
        )?;
        Self::event_tx(tx, kind, name, None, EventType::Normal, reason, message)
    }

    fn desired_snapshot(tx: &Connection) -> Result<Vec<SnapshotObject>> {
        let mut stmt = tx.prepare_cached(
            "SELECT o.kind, o.name, o.labels, o.annotations, o.spec, COALESCE(i.source, '')
             FROM objects o LEFT JOIN inventory i ON i.kind = o.kind AND i.name = o.name
             WHERE o.deleted_at IS NULL ORDER BY o.kind, o.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (k, name, l, a, s, source) = r?;
            let Some(kind) = Kind::parse_loose(&k) else {
                continue;
            };
            out.push(SnapshotObject {
                kind,
                name,
                labels: serde_json::from_str(&l).unwrap_or_default(),
                annotations: serde_json::from_str(&a).unwrap_or_default(),
                spec: serde_json::from_str(&s).unwrap_or(Value::Null),
                source,
            });
        }
        Ok(out)
    }

    fn record_generation(
        tx: &Connection,
        source: &str,
        added: usize,
        changed: usize,
        removed: usize,
    ) -> Result<u64> {
        let state = Self::desired_snapshot(tx)?;
        Ok(tx.query_row(
            "INSERT INTO generations (number, created_at, source, added, changed, removed, state)
             VALUES ((SELECT COALESCE(MAX(number), 0) + 1 FROM generations), ?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING number",
            params![
                now(),
                source,
                added as i64,
                changed as i64,
                removed as i64,
                json_text(&state)
            ],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Records the deletion of objects. Objects with finalizers stay, marked, until their
    /// finalizers are removed; the rest disappear at once.
    pub fn delete(&mut self, refs: &[(Kind, String)], description: &str) -> Result<Outcome> {
        let refs: Vec<_> = refs.iter().map(|(k, n)| (*k, n.clone(), None)).collect();
        self.delete_checked(&refs, description)
    }

    /// [`Store::delete`] with a precondition per object: when a resourceVersion is given, the
    /// object must still have it (else [`StoreError::Conflict`] and nothing is deleted).
    pub fn delete_checked(
        &mut self,
        refs: &[(Kind, String, Option<u64>)],
        description: &str,
    ) -> Result<Outcome> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcome = Outcome::default();
        for (kind, name, expected) in refs {
            let cur: Option<(Option<String>, i64)> = tx
                .query_row(
                    "SELECT deleted_at, resource_version FROM objects WHERE kind = ?1 AND name = ?2",
                    params![kind.as_str(), name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((deleted_at, rv)) = cur else {
                return Err(StoreError::NotFound {
                    kind: *kind,
                    name: name.clone(),
                });
            };
            if let Some(expected) = *expected
                && expected != rv as u64
            {
                return Err(StoreError::Conflict {
                    kind: *kind,
                    name: name.clone(),
                    expected,
                    actual: rv as u64,
                });
            }
            if deleted_at.is_none() {
                Self::mark_deleted(&tx, *kind, name, "Deleted", "deleted by request")?;
                outcome.changes.push(ObjectChange {
                    kind: *kind,
                    name: name.clone(),
                    action: Action::Deleted,
                });
            }
        }
        if outcome.changed_anything() {
            let (a, c, r) = outcome.counts();
            outcome.generation = Some(Self::record_generation(&tx, description, a, c, r)?);
        }
        tx.commit()?;
        Ok(outcome)
    }

    // ---- generations ----

    pub fn history(&self) -> Result<Vec<GenerationSummary>> {
        let mut stmt = self.conn.prepare(
            "SELECT number, created_at, source, added, changed, removed FROM generations ORDER BY number",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(GenerationSummary {
                number: r.get::<_, i64>(0)? as u64,
                time: r.get(1)?,
                source: r.get(2)?,
                added: r.get::<_, i64>(3)? as u64,
                changed: r.get::<_, i64>(4)? as u64,
                removed: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The full desired state recorded by generation `n`.
    pub fn generation_state(&self, n: u64) -> Result<Vec<SnapshotObject>> {
        let s: String = self
            .conn
            .query_row(
                "SELECT state FROM generations WHERE number = ?1",
                [n as i64],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NoSuchGeneration(n))?;
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt {
            kind: "Generation".into(),
            name: n.to_string(),
            message: e.to_string(),
        })
    }

    /// The newest generations' desired states (for garbage collection by reachability).
    pub fn recent_generation_states(&self, count: usize) -> Result<Vec<Vec<SnapshotObject>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT state FROM generations ORDER BY number DESC LIMIT ?1")?;
        let rows = stmt.query_map([count as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?).unwrap_or_default());
        }
        Ok(out)
    }

    /// Deletes all but the newest `keep` generations (at least one is kept); returns how many went.
    pub fn prune_generations(&mut self, keep: usize) -> Result<usize> {
        let keep = keep.max(1) as i64;
        Ok(self.conn.execute(
            "DELETE FROM generations WHERE number <= (SELECT MAX(number) FROM generations) - ?1",
            [keep],
        )?)
    }

    /// Deletes events last seen before `older_than` (RFC 3339, UTC) and all but the newest
    /// `keep` rows; returns how many went.
    pub fn prune_events(&mut self, older_than: &str, keep: usize) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = tx.execute("DELETE FROM events WHERE time < ?1", [older_than])?;
        n += tx.execute(
            "DELETE FROM events WHERE id < (SELECT MIN(id) FROM (SELECT id FROM events ORDER BY id DESC LIMIT ?1))",
            [keep as i64],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// The generation `rollback(target)` restores: `target`, or the one before the newest.
    pub fn rollback_target(&self, target: Option<u64>) -> Result<u64> {
        let latest: Option<i64> =
            self.conn
                .query_row("SELECT MAX(number) FROM generations", [], |r| r.get(0))?;
        match target {
            Some(t) => Ok(t),
            None => match latest {
                Some(l) if l > 1 => Ok((l - 1) as u64),
                _ => Err(StoreError::NothingToRollBack),
            },
        }
    }

    /// The prune inventory: which source (PATH key) each object was last applied from.
    pub fn owners(&self) -> Result<HashMap<(Kind, String), String>> {
        Self::inventory(&self.conn)
    }

    /// Makes desired state equal to generation `target` (default: the one before the newest), as a
    /// new generation, in one transaction. Status is untouched: controllers converge to it.
    pub fn rollback(&mut self, target: Option<u64>) -> Result<Outcome> {
        let target = self.rollback_target(target)?;
        let state = self.generation_state(target)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = Self::existing_index(&tx)?;
        let inventory = Self::inventory(&tx)?;
        let mut plan = Plan::default();
        let mut wanted = BTreeSet::new();
        for o in &state {
            let key = (o.kind, o.name.clone());
            wanted.insert(key.clone());
            let step = match existing.get(&key) {
                None => Step::Create,
                Some(cur) if cur.deleted_at.is_some() => {
                    return Err(StoreError::Deleting {
                        kind: o.kind,
                        name: o.name.clone(),
                    });
                }
                Some(cur) => {
                    let spec_changed = cur.spec != o.spec;
                    if spec_changed || cur.labels != o.labels || cur.annotations != o.annotations {
                        Step::Update {
                            resource_version: cur.resource_version,
                            bump_generation: spec_changed,
                        }
                    } else {
                        Step::Keep
                    }
                }
            };
            plan.items.push(PlannedItem {
                kind: o.kind,
                name: o.name.clone(),
                labels: o.labels.clone(),
                annotations: o.annotations.clone(),
                spec: o.spec.clone(),
                source: o.source.clone(),
                step,
                inventory_changed: !o.source.is_empty() && inventory.get(&key) != Some(&o.source),
            });
        }
        for (key, cur) in &existing {
            if cur.deleted_at.is_none() && !wanted.contains(key) {
                plan.prune.push(key.clone());
            }
        }
        plan.prune.sort();
        let generation = Self::execute(&tx, &plan, &format!("rollback to generation {target}"))?;
        tx.commit()?;
        let mut outcome = plan.outcome(generation);
        for c in &mut outcome.changes {
            if c.action == Action::Pruned {
                c.action = Action::Deleted;
            }
        }
        Ok(outcome)
    }

    // ---- status, finalizers, events (controllers) ----

    /// Replaces the status of an object. With `expected`, fails with a conflict unless the object is
    /// still at that resourceVersion. Returns the new resourceVersion.
    pub fn update_status(
        &mut self,
        kind: Kind,
        name: &str,
        expected: Option<u64>,
        status: &Value,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cur: u64 = tx
            .query_row(
                "SELECT resource_version FROM objects WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.into(),
            })? as u64;
        if let Some(e) = expected
            && e != cur
        {
            return Err(StoreError::Conflict {
                kind,
                name: name.into(),
                expected: e,
                actual: cur,
            });
        }
        let rv = Self::next_rv(&tx)?;
        tx.execute(
            "UPDATE objects SET status = ?1, resource_version = ?2 WHERE kind = ?3 AND name = ?4 AND resource_version = ?5",
            params![json_text(status), rv as i64, kind.as_str(), name, cur as i64],
        )?;
        tx.commit()?;
        Ok(rv)
    }

    /// Sets the finalizers of an object; an object being deleted with none left disappears.
    pub fn set_finalizers(&mut self, kind: Kind, name: &str, finalizers: &[String]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rv = Self::next_rv(&tx)?;
        let n = tx.execute(
            "UPDATE objects SET finalizers = ?1, resource_version = ?2 WHERE kind = ?3 AND name = ?4",
            params![json_text(&finalizers), rv as i64, kind.as_str(), name],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind,
                name: name.into(),
            });
        }
        tx.execute(
            "DELETE FROM objects WHERE kind = ?1 AND name = ?2 AND finalizers = '[]' AND deleted_at IS NOT NULL",
            params![kind.as_str(), name],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn event_tx(
        tx: &Connection,
        kind: Kind,
        name: &str,
        uid: Option<&str>,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        Self::append_event(tx, kind.as_str(), name, uid, type_, reason, message, None).map(|_| ())
    }

    /// Appends an event, or adds one to the count of its series (moving that row to a new id).
    /// The caller holds a transaction. Events of another source are another series.
    #[allow(clippy::too_many_arguments)]
    fn append_event(
        tx: &Connection,
        kind: &str,
        name: &str,
        uid: Option<&str>,
        type_: EventType,
        reason: &str,
        message: &str,
        source: Option<&str>,
    ) -> Result<i64> {
        let type_s = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let series = event_series(message);
        let t = now();
        let previous: Option<(i64, i64, String)> = tx
            .prepare_cached(
                "SELECT id, count, COALESCE(first_time, time) FROM events
                 WHERE kind = ?1 AND name = ?2 AND reason = ?3 AND series = ?4 AND type = ?5
                   AND source IS ?6
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![kind, name, reason, series, type_s, source], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let (count, first) = match previous {
            Some((id, count, first)) => {
                tx.prepare_cached("DELETE FROM events WHERE id = ?1")?
                    .execute([id])?;
                (count + 1, first)
            }
            None => (1, t.clone()),
        };
        tx.prepare_cached(
            "INSERT INTO events (time, kind, name, uid, type, reason, message, count, first_time, series, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            t, kind, name, uid, type_s, reason, message, count, first, series, source
        ])?;
        Ok(tx.last_insert_rowid())
    }

    /// Records an event in the durable log, aggregated into its series (see [`Event`]).
    pub fn record_event(
        &mut self,
        kind: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::append_event(&tx, kind, name, None, type_, reason, message, None)?;
        tx.commit()?;
        Ok(())
    }

    /// Records an event from `source` (`published`, `eventBus`) and returns it as stored.
    pub fn record_event_from(
        &mut self,
        source: &str,
        kind: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<Event> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = Self::append_event(&tx, kind, name, None, type_, reason, message, Some(source))?;
        tx.commit()?;
        let mut e = self.events(None, id - 1, 1000)?;
        e.retain(|e| e.id == id);
        e.pop()
            .ok_or_else(|| StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Events after `after_id`, optionally of one object, oldest first, at most `limit`.
    pub fn events(
        &self,
        object: Option<(&str, &str)>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let (k, n) = object.unzip();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, time, kind, name, type, reason, message, count, COALESCE(first_time, time), source FROM (
                SELECT * FROM events WHERE id > ?1 AND (?2 IS NULL OR (kind = ?2 AND name = ?3))
                ORDER BY id DESC LIMIT ?4) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![after_id, k, n, limit as i64], |r| {
            let time: String = r.get(1)?;
            Ok(Event {
                id: r.get(0)?,
                last_timestamp: time.clone(),
                time,
                kind: r.get(2)?,
                name: r.get(3)?,
                type_: if r.get::<_, String>(4)? == "Warning" {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: r.get(5)?,
                message: r.get(6)?,
                count: r.get::<_, i64>(7)? as u64,
                first_timestamp: r.get(8)?,
                source: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- small records (hardware profile, watched sources, ...) ----

    pub fn put_record(&mut self, key: &str, value: &Value) -> Result<()> {
        self.conn.execute(
            "INSERT INTO records (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, json_text(value), now()],
        )?;
        Ok(())
    }

    pub fn get_record(&self, key: &str) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn
            .query_row("SELECT value FROM records WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    pub fn records_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Value)>> {
        let mut stmt = self.conn.prepare(
            "SELECT key, value FROM records WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map([prefix], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (k, v) = r?;
            out.push((k, serde_json::from_str(&v).unwrap_or(Value::Null)));
        }
        Ok(out)
    }

    pub fn delete_record(&mut self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM records WHERE key = ?1", [key])?;
        Ok(())
    }

    // ---- workflow runs (records of control::workflows) ----

    /// Writes a workflow run's record (inserted or replaced whole); `record` carries `id`,
    /// `workflow`, `plugin`, `state` and `createdAt`.
    pub fn put_workflow_run(&mut self, record: &Value) -> Result<()> {
        let field = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or_default();
        self.conn.execute(
            "INSERT INTO workflow_runs (id, workflow, plugin, state, created_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record",
            params![
                field("id"),
                field("workflow"),
                field("plugin"),
                field("state"),
                field("createdAt"),
                json_text(record)
            ],
        )?;
        Ok(())
    }

    pub fn workflow_run(&self, id: &str) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM workflow_runs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Runs, newest first, of one workflow or all, or only those in `states`; at most `limit`.
    pub fn workflow_runs(
        &self,
        workflow: Option<&str>,
        states: &[&str],
        limit: usize,
    ) -> Result<Vec<Value>> {
        let states = json_text(&states);
        let mut stmt = self.conn.prepare_cached(
            "SELECT record FROM workflow_runs
             WHERE (?1 IS NULL OR workflow = ?1)
               AND (?2 = '[]' OR state IN (SELECT value FROM json_each(?2)))
             ORDER BY created_at DESC, id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![workflow, states, limit as i64], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(v) = serde_json::from_str(&r?) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The raw connection, for the runtime's own tables (`native_processes`).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Create,
    Update {
        resource_version: u64,
        bump_generation: bool,
    },
    Keep,
}

#[derive(Debug)]
struct PlannedItem {
    kind: Kind,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: Value,
    source: String,
    step: Step,
    inventory_changed: bool,
}

#[derive(Debug, Default)]
struct Plan {
    items: Vec<PlannedItem>,
    prune: Vec<(Kind, String)>,
}

impl Plan {
    fn changes_desired_state(&self) -> bool {
        !self.prune.is_empty() || self.items.iter().any(|i| i.step != Step::Keep)
    }
    fn writes_anything(&self) -> bool {
        self.changes_desired_state() || self.items.iter().any(|i| i.inventory_changed)
    }
    fn outcome(&self, generation: Option<u64>) -> Outcome {
        let mut changes: Vec<ObjectChange> = self
            .items
            .iter()
            .map(|i| ObjectChange {
                kind: i.kind,
                name: i.name.clone(),
                action: match i.step {
                    Step::Create => Action::Created,
                    Step::Update { .. } => Action::Configured,
                    Step::Keep => Action::Unchanged,
                },
            })
            .collect();
        changes.extend(self.prune.iter().map(|(k, n)| ObjectChange {
            kind: *k,
            name: n.clone(),
            action: Action::Pruned,
        }));
        Outcome {
            generation,
            changes,
        }
    }
}
