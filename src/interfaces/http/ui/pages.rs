//! The console's pages and form actions. Each page reads what the API reads (the store, the
//! daemon's runtime facts, the plugin inventory); each action calls what the API or `lasctl`
//! calls. `?fragment=live` answers only the part of a page that live updates replace.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::super::ApiContext;
use super::super::resources;
use super::i18n::{Lang, SHIPPED, Tr};
use super::{Viewer, form_allowed, html, see_other, viewer};
use crate::api::decode::{InputFile, decode_files};
use crate::api::{Desired, Kind, Origin, Spec};
use crate::control::hardware::HardwareProfile;
use crate::control::plan::{Plan, PlanInput, plan};
use crate::control::policy::{
    FileSizeEstimator, GgufEstimator, NamedPolicy, default_policies, human_bytes, select_tier,
};
use crate::control::store::{Event, StoredObject};

/// The navigation: (id, path, message key).
const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/ui/", "nav-overview"),
    ("resources", "/ui/resources", "nav-resources"),
    ("events", "/ui/events", "nav-events"),
    ("history", "/ui/history", "nav-history"),
    ("plan", "/ui/plan", "nav-plan"),
    ("hardware", "/ui/hardware", "nav-hardware"),
    ("plugins", "/ui/plugins", "nav-plugins"),
    ("playground", "/ui/playground", "nav-playground"),
];

/// What every page's layout shows.
pub(super) struct Base {
    pub tr: Tr,
    pub csrf: String,
    pub nav: &'static str,
    pub title: String,
    /// This page's path (the language switcher links to it).
    pub path: String,
    /// The store's change counter when the page was rendered (the live stream starts after it).
    pub version: u64,
    /// A notice after an action (free text from the system, or a message).
    pub notice: String,
    pub error: String,
}

impl Base {
    fn new(ctx: &ApiContext, v: &Viewer, nav: &'static str, title_key: &str, path: &str) -> Base {
        Base {
            tr: v.tr,
            csrf: v.csrf.clone(),
            nav,
            title: v.tr.t(title_key),
            path: path.to_string(),
            version: *ctx.changes.borrow(),
            notice: String::new(),
            error: String::new(),
        }
    }

    pub fn nav_items(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        NAV
    }

    pub fn langs(&self) -> &'static [Lang] {
        &SHIPPED
    }
}

/// `?lang=` and `?fragment=` of every page.
#[derive(Debug, Deserialize, Default)]
pub(super) struct Common {
    lang: Option<String>,
    fragment: Option<String>,
}

const LIVE_START: &str = "<!--live-->";
const LIVE_END: &str = "<!--/live-->";

/// Renders a page (or only its live fragment).
fn respond<T: Template>(v: &Viewer, page: &T, fragment: Option<&str>) -> Response {
    let text = match page.render() {
        Ok(t) => t,
        Err(e) => {
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                format!("<!doctype html><title>500</title><p>{e}</p>"),
            );
        }
    };
    // The live part and its hash: the page's script replaces the part only when the hash moved.
    let live = match (text.find(LIVE_START), text.find(LIVE_END)) {
        (Some(a), Some(b)) if a < b => Some(&text[a + LIVE_START.len()..b]),
        _ => None,
    };
    let hash = live.map(|l| {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        l.hash(&mut h);
        format!("{:016x}", h.finish())
    });
    let (body, header) = match (fragment, live, &hash) {
        (Some("live"), Some(l), Some(h)) => (l.to_string(), Some(h.clone())),
        (Some("live"), _, _) => (String::new(), None),
        (_, _, Some(h)) => (
            text.replacen(
                "data-live=\"live\"",
                &format!("data-live=\"live\" data-hash=\"{h}\""),
                1,
            ),
            None,
        ),
        _ => (text.clone(), None),
    };
    let mut resp = html(StatusCode::OK, Some((v.tr.lang, v.remember_lang)), body);
    if let Some(h) = header
        && let Ok(v) = axum::http::HeaderValue::from_str(&h)
    {
        resp.headers_mut().insert("x-las-fragment-hash", v);
    }
    resp
}

fn internal(v: &Viewer, e: impl std::fmt::Display) -> Response {
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        format!(
            "<!doctype html><title>{}</title><p>{}</p>",
            v.tr.t("error-title"),
            escape(&e.to_string())
        ),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// ---- shared rows ----

/// One object as a table row.
pub(super) struct Row {
    pub kind: String,
    pub kind_label: String,
    pub name: String,
    pub href: String,
    pub ready: String,
    pub ready_class: &'static str,
    pub reason: String,
    pub message: String,
    pub generation: u64,
    pub observed: String,
    pub created: String,
}

fn row(tr: Tr, o: &StoredObject) -> Row {
    let (ready, class, reason, message) = match o.condition("Ready") {
        Some((s, r, m)) => {
            let s = s.as_str();
            let class = match s {
                "True" => "ok",
                "False" => "bad",
                _ => "unknown",
            };
            (
                tr.t(&format!("status-{}", s.to_ascii_lowercase())),
                class,
                tr.reason(&r),
                m,
            )
        }
        None => (
            tr.t("status-unknown"),
            "unknown",
            String::new(),
            String::new(),
        ),
    };
    Row {
        kind: o.kind.plural().to_string(),
        kind_label: kind_label(tr, o.kind),
        name: o.name.to_string(),
        href: format!("/ui/resources/{}/{}", o.kind.plural(), o.name),
        ready,
        ready_class: class,
        reason,
        message,
        generation: o.generation,
        observed: o
            .observed_generation()
            .map(|g| g.to_string())
            .unwrap_or_default(),
        created: o.created_at.clone(),
    }
}

fn kind_label(tr: Tr, k: Kind) -> String {
    tr.t(match k {
        Kind::Model => "kind-model",
        Kind::Module => "kind-module",
        Kind::Policy => "kind-policy",
        Kind::Plugin => "kind-plugin",
        Kind::PluginActivation => "kind-pluginactivation",
    })
}

pub(super) struct EventRow {
    pub time: String,
    pub object: String,
    pub href: String,
    pub warning: bool,
    pub type_label: String,
    pub reason: String,
    pub message: String,
    pub count: u64,
}

fn event_row(tr: Tr, e: &Event) -> EventRow {
    let href = Kind::parse_loose(&e.kind)
        .map(|k| format!("/ui/resources/{}/{}", k.plural(), e.name))
        .unwrap_or_default();
    let warning = matches!(e.type_, crate::control::store::EventType::Warning);
    EventRow {
        time: e.last_timestamp.clone(),
        object: format!("{}/{}", e.kind, e.name),
        href,
        warning,
        type_label: tr.t(if warning {
            "event-warning"
        } else {
            "event-normal"
        }),
        reason: tr.reason(&e.reason),
        message: e.message.clone(),
        count: e.count,
    }
}

fn live(objects: Vec<StoredObject>) -> Vec<StoredObject> {
    objects
        .into_iter()
        .filter(|o| o.deleted_at.is_none())
        .collect()
}

fn desired_of(o: &StoredObject) -> Option<Desired> {
    Some(Desired {
        name: o.name.clone(),
        labels: o.labels.clone(),
        annotations: o.annotations.clone(),
        spec: o.typed_spec().ok()?,
        origin: Origin {
            file: "<store>".into(),
            line: 0,
        },
        resource_version: None,
    })
}

/// The hardware profile the daemon reports (or, when it reports none, this machine's).
async fn profile(ctx: &ApiContext) -> Result<HardwareProfile, String> {
    let rt = ctx.daemon.runtime().await;
    if let Ok(p) = serde_json::from_value::<HardwareProfile>(rt.hardware) {
        return Ok(p);
    }
    tokio::task::spawn_blocking(|| {
        crate::control::hardware::probe_from_env()
            .probe()
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Plans `desired` against the store's objects, the way `lasctl plan` does (the shipped policies
/// when none is stored or given).
fn plan_over(
    profile: &HardwareProfile,
    desired: &[Desired],
    state: &[StoredObject],
    exact_sizes: bool,
) -> Result<Plan, String> {
    let mut policies: Vec<NamedPolicy> = state
        .iter()
        .filter(|o| o.deleted_at.is_none())
        .filter_map(|o| match o.typed_spec() {
            Ok(Spec::Policy(spec)) => Some(NamedPolicy {
                name: o.name.to_string(),
                spec,
            }),
            _ => None,
        })
        .collect();
    for d in desired {
        if let Spec::Policy(p) = &d.spec {
            policies.retain(|n| n.name != d.name.as_str());
            policies.push(NamedPolicy {
                name: d.name.to_string(),
                spec: p.clone(),
            });
        }
    }
    if policies.is_empty() {
        policies = default_policies().map_err(|e| e.to_string())?;
    }
    let tier = select_tier(&policies, profile).map_err(|e| e.to_string())?;
    let loaded = crate::artifacts::catalog::Catalog::from_env().map_err(|e| e.to_string())?;
    let planned = plan(&PlanInput {
        desired,
        state,
        profile,
        tier: &tier,
        catalog: &loaded.catalog,
        lock: None,
        update: false,
        estimator: if exact_sizes {
            &GgufEstimator
        } else {
            &FileSizeEstimator
        },
    });
    Ok(planned.plan)
}

/// A device's memory as a bar: before, planned, free (percent of capacity).
pub(super) struct DeviceBar {
    pub device: String,
    pub name: String,
    pub capacity: String,
    pub before: String,
    pub planned: String,
    pub after: String,
    pub free: String,
    pub before_pct: u64,
    pub planned_pct: u64,
    pub over: bool,
}

fn bars(p: &Plan) -> Vec<DeviceBar> {
    p.devices
        .iter()
        .map(|d| {
            let pct = |b: u64| {
                (b.saturating_mul(100))
                    .checked_div(d.capacity_bytes)
                    .unwrap_or(0)
            };
            let before_pct = pct(d.before_bytes).min(100);
            DeviceBar {
                device: d.device.clone(),
                name: d.name.clone().unwrap_or_default(),
                capacity: human_bytes(d.capacity_bytes),
                before: human_bytes(d.before_bytes),
                planned: human_bytes(d.planned_bytes),
                after: human_bytes(d.after_bytes),
                free: human_bytes(d.free_after_headroom_bytes),
                before_pct,
                planned_pct: pct(d.planned_bytes).min(100 - before_pct),
                over: d.after_bytes + d.headroom_bytes > d.capacity_bytes,
            }
        })
        .collect()
}

// ---- overview ----

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    b: Base,
    tier: String,
    tier_reason: String,
    devices: Vec<DeviceBar>,
    measured_ram: String,
    measured_vram: String,
    counts: Vec<(String, &'static str)>,
    total: u64,
    problems: Vec<Row>,
}

pub(super) async fn overview(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let tr = v.tr;
    let all = match ctx.with_store(|s| s.list(None, &Default::default())).await {
        Ok(a) => a,
        Err(e) => return internal(&v, e),
    };
    let objects = live(all.clone());
    let rt = ctx.daemon.runtime().await;
    let mut tier = rt.tier.clone().unwrap_or_default();
    let mut tier_reason = rt.tier_reason.clone().unwrap_or_default();
    let mut devices = Vec::new();
    if let Ok(p) = profile(&ctx).await {
        let desired: Vec<Desired> = objects.iter().filter_map(desired_of).collect();
        if let Ok(plan) = tokio::task::spawn_blocking(move || plan_over(&p, &desired, &all, false))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        {
            if tier.is_empty() {
                tier = plan.tier.tier.clone();
                tier_reason = plan.tier.reason.clone();
            }
            devices = bars(&plan);
        }
    }
    let workloads = ctx.daemon.workloads().await;
    let ram: u64 = workloads.iter().filter_map(|w| w.memory_bytes).sum();
    let vram: u64 = workloads.iter().filter_map(|w| w.vram_bytes).sum();
    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for o in &objects {
        let r = row(tr, o);
        *by.entry(r.ready_class).or_default() += 1;
        if r.ready_class != "ok" {
            problems.push(r);
        }
    }
    let counts = [
        ("ok", "count-ready"),
        ("bad", "count-not-ready"),
        ("unknown", "count-unknown"),
    ]
    .into_iter()
    .map(|(class, key)| {
        let n = by.get(class).copied().unwrap_or(0);
        (tr.n(key, n), class)
    })
    .collect();
    let page = OverviewPage {
        b: Base::new(&ctx, &v, "overview", "overview-title", "/ui/"),
        tier,
        tier_reason,
        devices,
        measured_ram: human_bytes(ram),
        measured_vram: human_bytes(vram),
        counts,
        total: objects.len() as u64,
        problems,
    };
    respond(&v, &page, c.fragment.as_deref())
}

// ---- resources ----

#[derive(Debug, Deserialize, Default)]
pub(super) struct ResourcesQuery {
    lang: Option<String>,
    fragment: Option<String>,
    /// A kind (plural, singular or short), or all.
    kind: Option<String>,
    /// Part of the name.
    q: Option<String>,
    /// `true`, `false`, `unknown`.
    ready: Option<String>,
    /// `name`, `kind`, `ready`, `age` (a leading `-` reverses).
    sort: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/resources.html")]
struct ResourcesPage {
    b: Base,
    rows: Vec<Row>,
    kinds: Vec<(String, String, bool)>,
    q: String,
    ready: String,
    sorts: Vec<(&'static str, String, bool, bool)>,
}

pub(super) async fn resources(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<ResourcesQuery>,
) -> Response {
    let v = match viewer(&ctx, &headers, q.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let tr = v.tr;
    let kind = q
        .kind
        .as_deref()
        .filter(|k| !k.is_empty())
        .and_then(Kind::parse_loose);
    let objects = match ctx
        .with_store(move |s| s.list(kind, &Default::default()))
        .await
    {
        Ok(a) => live(a),
        Err(e) => return internal(&v, e),
    };
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let ready = q.ready.clone().unwrap_or_default();
    let mut rows: Vec<Row> = objects
        .iter()
        .filter(|o| needle.is_empty() || o.name.as_str().to_lowercase().contains(&needle))
        .map(|o| row(tr, o))
        .filter(|r| match ready.as_str() {
            "true" => r.ready_class == "ok",
            "false" => r.ready_class == "bad",
            "unknown" => r.ready_class == "unknown",
            _ => true,
        })
        .collect();
    let sort = q.sort.clone().unwrap_or_else(|| "kind".into());
    let (desc, key) = match sort.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, sort.as_str()),
    };
    rows.sort_by(|a, b| {
        let o = match key {
            "name" => a.name.cmp(&b.name),
            "ready" => a.ready_class.cmp(b.ready_class).then(a.name.cmp(&b.name)),
            "age" => a.created.cmp(&b.created).then(a.name.cmp(&b.name)),
            _ => a.kind.cmp(&b.kind).then(a.name.cmp(&b.name)),
        };
        if desc { o.reverse() } else { o }
    });
    let kinds = Kind::ALL
        .iter()
        .map(|k| (k.plural().to_string(), kind_label(tr, *k), Some(*k) == kind))
        .collect();
    let page = ResourcesPage {
        b: Base::new(&ctx, &v, "resources", "resources-title", "/ui/resources"),
        rows,
        kinds,
        q: q.q.clone().unwrap_or_default(),
        ready,
        sorts: [
            ("kind", "col-kind"),
            ("name", "col-name"),
            ("ready", "col-ready"),
            ("age", "col-created"),
        ]
        .into_iter()
        .map(|(k, label)| (k, tr.t(label), !desc && key == k, desc && key == k))
        .collect(),
    };
    respond(&v, &page, q.fragment.as_deref())
}

// ---- object detail ----

pub(super) struct CondRow {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: String,
}

#[derive(Template)]
#[template(path = "ui/object.html")]
struct ObjectPage {
    b: Base,
    row: Row,
    spec: String,
    status: String,
    labels: String,
    conditions: Vec<CondRow>,
    events: Vec<EventRow>,
    history: Vec<(u64, String, String, String)>,
}

pub(super) async fn object(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let tr = v.tr;
    let Some(k) = Kind::parse_loose(&kind) else {
        return not_found(&v);
    };
    let n = name.clone();
    let found = ctx
        .with_store(move |s| {
            let o = s.get(k, &n)?;
            let ev = s.events(Some((k.as_str(), &n)), 0, 50)?;
            let h = crate::control::history::object_history(s, k, &n)?;
            Ok((o, ev, h))
        })
        .await;
    let (o, events, hist) = match found {
        Ok(x) => x,
        Err(crate::control::store::StoreError::NotFound { .. }) => return not_found(&v),
        Err(e) => return internal(&v, e),
    };
    let yaml = |v: &Value| serde_yaml::to_string(v).unwrap_or_default();
    let conditions = o.status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            CondRow {
                type_: tr.reason(&s("type")),
                status: tr.t(&format!("status-{}", s("status").to_ascii_lowercase())),
                reason: tr.reason(&s("reason")),
                message: s("message"),
                since: s("lastTransitionTime"),
            }
        })
        .collect();
    let mut labels = String::new();
    for (k, val) in &o.labels {
        labels += &format!("{k}={val} ");
    }
    let history = hist
        .iter()
        .rev()
        .map(|r| {
            (
                r.generation,
                r.time.clone(),
                tr.t(&format!("revision-{}", r.revision.as_str())),
                r.changes
                    .iter()
                    .map(|c| c.path.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
        .collect();
    let mut events: Vec<EventRow> = events.iter().map(|e| event_row(tr, e)).collect();
    events.reverse();
    let path = format!("/ui/resources/{}/{}", k.plural(), o.name);
    let mut b = Base::new(&ctx, &v, "resources", "object-title", &path);
    b.title = format!("{} {}", kind_label(tr, k), o.name);
    let page = ObjectPage {
        b,
        row: row(tr, &o),
        spec: yaml(&o.spec),
        status: yaml(&o.status),
        labels: labels.trim().to_string(),
        conditions,
        events,
        history,
    };
    respond(&v, &page, c.fragment.as_deref())
}

fn not_found(v: &Viewer) -> Response {
    super::door::message_page(
        StatusCode::NOT_FOUND,
        v.tr,
        "notfound-title",
        "notfound-body",
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    lang: Option<String>,
}

fn refused(v: &Viewer) -> Response {
    super::door::message_page(StatusCode::FORBIDDEN, v.tr, "csrf-title", "csrf-body")
}

/// `POST /ui/resources/{kind}/{name}/delete`: `DELETE /api/v1/{kind}/{name}`.
pub(super) async fn delete(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let v = match viewer(&ctx, &headers, f.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !form_allowed(&v, f.csrf.as_deref()) {
        return refused(&v);
    }
    match resources::delete_one(
        State(ctx.clone()),
        Path((kind.clone(), name.clone())),
        Query(Default::default()),
    )
    .await
    {
        Ok(_) => see_other(&format!("/ui/resources?kind={kind}")),
        Err(e) => action_error(&ctx, &v, e.into_response()).await,
    }
}

/// The page for an action the API refused: its message (free text from the system).
async fn action_error(ctx: &ApiContext, v: &Viewer, resp: Response) -> Response {
    let code = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|j| j["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).to_string());
    let mut b = Base::new(ctx, v, "", "action-failed-title", "/ui/");
    b.error = message;
    let page = ResultPage { b, lines: vec![] };
    let mut r = respond(v, &page, None);
    *r.status_mut() = code;
    r
}

#[derive(Template)]
#[template(path = "ui/result.html")]
struct ResultPage {
    b: Base,
    lines: Vec<String>,
}

// ---- events ----

#[derive(Debug, Deserialize, Default)]
pub(super) struct EventsQuery {
    lang: Option<String>,
    fragment: Option<String>,
    /// `Warning` or `Normal`.
    #[serde(rename = "type")]
    type_: Option<String>,
    /// Part of `KIND/NAME`.
    object: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/events.html")]
struct EventsPage {
    b: Base,
    events: Vec<EventRow>,
    type_: String,
    object: String,
}

pub(super) async fn events(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let v = match viewer(&ctx, &headers, q.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let tr = v.tr;
    let list = match ctx.with_store(|s| s.events(None, 0, 500)).await {
        Ok(l) => l,
        Err(e) => return internal(&v, e),
    };
    let type_ = q.type_.clone().unwrap_or_default();
    let object = q.object.clone().unwrap_or_default();
    let mut events: Vec<EventRow> = list
        .iter()
        .map(|e| event_row(tr, e))
        .filter(|e| match type_.as_str() {
            "Warning" => e.warning,
            "Normal" => !e.warning,
            _ => true,
        })
        .filter(|e| object.is_empty() || e.object.to_lowercase().contains(&object.to_lowercase()))
        .collect();
    events.reverse();
    let page = EventsPage {
        b: Base::new(&ctx, &v, "events", "events-title", "/ui/events"),
        events,
        type_,
        object,
    };
    respond(&v, &page, q.fragment.as_deref())
}

// ---- hardware ----

#[derive(Template)]
#[template(path = "ui/hardware.html")]
struct HardwarePage {
    b: Base,
    facts: Vec<(String, String)>,
    problem: String,
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

pub(super) async fn hardware(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let mut facts = Vec::new();
    let mut problem = String::new();
    match profile(&ctx).await {
        Ok(p) => flatten("", &p.to_json(), &mut facts),
        Err(e) => problem = e,
    }
    let page = HardwarePage {
        b: Base::new(&ctx, &v, "hardware", "hardware-title", "/ui/hardware"),
        facts,
        problem,
    };
    respond(&v, &page, c.fragment.as_deref())
}

// ---- history and rollback ----

#[derive(Debug, Deserialize, Default)]
pub(super) struct HistoryQuery {
    lang: Option<String>,
    fragment: Option<String>,
    /// Diff from generation `a` to generation `b`.
    a: Option<u64>,
    b: Option<u64>,
    /// The generation a rollback just recorded.
    done: Option<u64>,
}

pub(super) struct GenRow {
    pub number: u64,
    pub time: String,
    pub source: String,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

#[derive(Template)]
#[template(path = "ui/history.html")]
struct HistoryPage {
    b: Base,
    gens: Vec<GenRow>,
    a: u64,
    bb: u64,
    diff: Vec<(String, &'static str)>,
}

/// Each object of a generation as YAML of what a generation records.
fn state_yaml(objs: &[crate::control::store::SnapshotObject]) -> BTreeMap<String, String> {
    objs.iter()
        .map(|o| {
            (
                format!("{}/{}", o.kind, o.name),
                serde_yaml::to_string(&crate::control::history::desired_view(o))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// A unified diff of two sets of objects, as lines with a class (`add`, `del`, `hunk`, ``).
fn diff_lines(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    (la, lb): (&str, &str),
) -> Vec<(String, &'static str)> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let a = old.get(k).map_or("", String::as_str);
        let b = new.get(k).map_or("", String::as_str);
        if a == b {
            continue;
        }
        let d = similar::TextDiff::from_lines(a, b);
        let text = d
            .unified_diff()
            .context_radius(3)
            .header(&format!("{la}/{k}"), &format!("{lb}/{k}"))
            .to_string();
        for l in text.lines() {
            let class = if l.starts_with("+++") || l.starts_with("---") {
                "file"
            } else if l.starts_with('+') {
                "add"
            } else if l.starts_with('-') {
                "del"
            } else if l.starts_with("@@") {
                "hunk"
            } else {
                ""
            };
            out.push((l.to_string(), class));
        }
    }
    out
}

pub(super) async fn history(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let v = match viewer(&ctx, &headers, q.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let (qa, qb) = (q.a, q.b);
    let read = ctx
        .with_store(move |s| {
            let h = s.history()?;
            let last = h.last().map(|g| g.number).unwrap_or(0);
            let b = qb.unwrap_or(last);
            let a = qa.unwrap_or(b.saturating_sub(1));
            let sa = if a == 0 {
                Vec::new()
            } else {
                s.generation_state(a).unwrap_or_default()
            };
            let sb = if b == 0 {
                Vec::new()
            } else {
                s.generation_state(b).unwrap_or_default()
            };
            Ok((h, a, b, sa, sb))
        })
        .await;
    let (h, a, b, sa, sb) = match read {
        Ok(x) => x,
        Err(e) => return internal(&v, e),
    };
    let diff = diff_lines(
        &state_yaml(&sa),
        &state_yaml(&sb),
        (
            format!("generation-{a}").as_str(),
            format!("generation-{b}").as_str(),
        ),
    );
    let gens = h
        .iter()
        .rev()
        .map(|g| GenRow {
            number: g.number,
            time: g.time.clone(),
            source: g.source.clone(),
            added: g.added,
            changed: g.changed,
            removed: g.removed,
        })
        .collect();
    let mut base = Base::new(&ctx, &v, "history", "history-title", "/ui/history");
    if let Some(d) = q.done {
        base.notice = v.tr.v("rollback-done", &d.to_string());
    }
    let page = HistoryPage {
        b: base,
        gens,
        a,
        bb: b,
        diff,
    };
    respond(&v, &page, q.fragment.as_deref())
}

#[derive(Debug, Deserialize)]
pub(super) struct RollbackForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    lang: Option<String>,
    generation: u64,
    /// Set by the confirmation page's button.
    confirm: Option<String>,
    /// Suspend the watched directories that own changed objects (as `--suspend-source`).
    suspend_source: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/rollback.html")]
struct ConfirmPage {
    b: Base,
    generation: u64,
    diff: Vec<(String, &'static str)>,
    owners: Vec<(String, String)>,
}

/// `POST /ui/history/rollback`: first the confirmation (the diff from the desired state now to
/// that generation's, and the watched directories it would suspend), then — with `confirm` —
/// `control::sources::rollback_guarded`, as `lasctl rollback` does: exactly one new generation.
pub(super) async fn rollback(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Form(f): Form<RollbackForm>,
) -> Response {
    let v = match viewer(&ctx, &headers, f.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !form_allowed(&v, f.csrf.as_deref()) {
        return refused(&v);
    }
    let target = f.generation;
    if f.confirm.as_deref() != Some("yes") {
        let read = ctx
            .with_store(move |s| {
                let now: Vec<crate::control::store::SnapshotObject> = s
                    .list(None, &Default::default())?
                    .into_iter()
                    .filter(|o| o.deleted_at.is_none())
                    .map(|o| crate::control::store::SnapshotObject {
                        kind: o.kind,
                        name: o.name.to_string(),
                        labels: o.labels.clone(),
                        annotations: o.annotations.clone(),
                        spec: o.spec.clone(),
                        source: String::new(),
                    })
                    .collect();
                let then = s.generation_state(target)?;
                let owners = crate::control::sources::rollback_owners(s, target)?
                    .into_iter()
                    .filter(|(src, _)| !crate::control::sources::is_suspended(s, src))
                    .collect::<BTreeMap<_, _>>();
                Ok((now, then, owners))
            })
            .await;
        let (now, then, owners) = match read {
            Ok(x) => x,
            Err(e) => return action_error(&ctx, &v, resources_error(e)).await,
        };
        let page = ConfirmPage {
            b: Base::new(&ctx, &v, "history", "rollback-title", "/ui/history"),
            generation: target,
            diff: diff_lines(
                &state_yaml(&now),
                &state_yaml(&then),
                ("live", format!("generation-{target}").as_str()),
            ),
            owners: owners.into_iter().map(|(s, o)| (s, o.join(", "))).collect(),
        };
        return respond(&v, &page, None);
    }
    let suspend = f.suspend_source.is_some();
    let done = ctx
        .with_store(move |s| {
            Ok(crate::control::sources::rollback_guarded(
                s,
                Some(target),
                suspend,
            ))
        })
        .await;
    match done {
        Ok(Ok((o, _))) => match o.generation {
            Some(g) => see_other(&format!("/ui/history?done={g}")),
            None => see_other("/ui/history"),
        },
        Ok(Err(crate::control::sources::RollbackError::Store(e))) | Err(e) => {
            action_error(&ctx, &v, resources_error(e)).await
        }
        Ok(Err(e)) => {
            let mut b = Base::new(&ctx, &v, "history", "action-failed-title", "/ui/history");
            b.error = e.to_string();
            let mut r = respond(&v, &ResultPage { b, lines: vec![] }, None);
            *r.status_mut() = StatusCode::CONFLICT;
            r
        }
    }
}

fn resources_error(e: crate::control::store::StoreError) -> Response {
    resources::ApiError::from(e).into_response()
}

// ---- plan and apply ----

#[derive(Template)]
#[template(path = "ui/plan.html")]
struct PlanPage {
    b: Base,
    yaml: String,
    planned: bool,
    tier: String,
    tier_reason: String,
    actions: Vec<(u32, String, String, String, String)>,
    devices: Vec<DeviceBar>,
    refusals: Vec<(String, String)>,
    errors: Vec<String>,
}

impl PlanPage {
    fn empty(b: Base) -> Self {
        PlanPage {
            b,
            yaml: String::new(),
            planned: false,
            tier: String::new(),
            tier_reason: String::new(),
            actions: vec![],
            devices: vec![],
            refusals: vec![],
            errors: vec![],
        }
    }
}

pub(super) async fn plan_form(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let page = PlanPage::empty(Base::new(&ctx, &v, "plan", "plan-title", "/ui/plan"));
    respond(&v, &page, c.fragment.as_deref())
}

#[derive(Debug, Deserialize)]
pub(super) struct YamlForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    lang: Option<String>,
    yaml: String,
}

/// `POST /ui/plan`: the plan of the pasted documents, as `lasctl plan` computes it. Records
/// nothing (a preview needs no anti-forgery token, but forms send it anyway).
pub(super) async fn plan_post(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Form(f): Form<YamlForm>,
) -> Response {
    let v = match viewer(&ctx, &headers, f.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !form_allowed(&v, f.csrf.as_deref()) {
        return refused(&v);
    }
    let tr = v.tr;
    let mut page = PlanPage::empty(Base::new(&ctx, &v, "plan", "plan-title", "/ui/plan"));
    page.yaml = f.yaml.clone();
    let file = InputFile {
        name: "pasted".into(),
        bytes: f.yaml.into_bytes(),
    };
    let desired = match decode_files(std::slice::from_ref(&file)) {
        Ok(d) => d,
        Err(e) => {
            page.errors = e.0.iter().map(|x| x.to_string()).collect();
            return respond(&v, &page, None);
        }
    };
    let state = match ctx.with_store(|s| s.list(None, &Default::default())).await {
        Ok(s) => s,
        Err(e) => return internal(&v, e),
    };
    let p = match profile(&ctx).await {
        Ok(p) => p,
        Err(e) => {
            page.errors = vec![e];
            return respond(&v, &page, None);
        }
    };
    match tokio::task::spawn_blocking(move || plan_over(&p, &desired, &state, true))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    {
        Ok(plan) => {
            page.planned = true;
            page.tier = plan.tier.tier.clone();
            page.tier_reason = plan.tier.reason.clone();
            page.devices = bars(&plan);
            page.actions = plan
                .actions
                .iter()
                .map(|a| {
                    let key = serde_json::to_value(a.action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    (
                        a.id,
                        tr.t(&format!("action-{}", key.to_ascii_lowercase())),
                        a.object.clone(),
                        a.detail.clone(),
                        a.depends_on
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    )
                })
                .collect();
            page.refusals = plan
                .refusals
                .iter()
                .map(|r| (r.object.clone(), r.reason.clone()))
                .collect();
        }
        Err(e) => page.errors = vec![e],
    }
    respond(&v, &page, None)
}

/// `POST /ui/apply`: the pasted documents through `POST /api/v1/apply` (the same decoding, tier
/// check, plugin admission and store call).
pub(super) async fn apply(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Form(f): Form<YamlForm>,
) -> Response {
    let v = match viewer(&ctx, &headers, f.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !form_allowed(&v, f.csrf.as_deref()) {
        return refused(&v);
    }
    let r = resources::apply(
        State(ctx.clone()),
        Query(Default::default()),
        Body::from(f.yaml),
    )
    .await;
    match r {
        Ok(resp) if resp.status().is_success() => {
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let outcome: Value = serde_json::from_slice(&body).unwrap_or_default();
            let lines = outcome["changes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    format!(
                        "{}/{} {}",
                        c["kind"].as_str().unwrap_or_default(),
                        c["name"].as_str().unwrap_or_default(),
                        v.tr.t(&format!(
                            "change-{}",
                            c["action"].as_str().unwrap_or("unchanged").to_lowercase()
                        ))
                    )
                })
                .collect();
            let mut b = Base::new(&ctx, &v, "plan", "apply-title", "/ui/plan");
            b.notice = match outcome["generation"].as_u64() {
                Some(g) => v.tr.v("apply-recorded", &g.to_string()),
                None => v.tr.t("apply-nothing"),
            };
            respond(&v, &ResultPage { b, lines }, None)
        }
        Ok(resp) => action_error(&ctx, &v, resp).await,
        Err(e) => action_error(&ctx, &v, e.into_response()).await,
    }
}

// ---- plugins ----

pub(super) struct SeamRow {
    pub seam: String,
    pub pluggable: bool,
    pub accepts: String,
    pub active: Vec<ActiveRow>,
}

pub(super) struct ActiveRow {
    pub activation: String,
    pub plugin: String,
    pub contribution: String,
    pub point: String,
    pub calls: String,
    pub failures: String,
    pub breaker: String,
    pub breaker_open: bool,
    pub last_error: String,
}

pub(super) struct ActivationRow {
    pub name: String,
    pub plugin: String,
    pub requested: String,
    pub granted: String,
    pub ungranted: String,
    pub ready: String,
}

#[derive(Template)]
#[template(path = "ui/plugins.html")]
struct PluginsPage {
    b: Base,
    seams: Vec<SeamRow>,
    plugins: Vec<(String, String, String)>,
    activations: Vec<ActivationRow>,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => String::new(),
        other => other.to_string(),
    }
}

pub(super) async fn plugins(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let tr = v.tr;
    let inv = match resources::plugin_inventory(State(ctx.clone())).await {
        Ok(r) => {
            let body = axum::body::to_bytes(r.into_body(), 8 << 20)
                .await
                .unwrap_or_default();
            serde_json::from_slice::<Value>(&body).unwrap_or_default()
        }
        Err(e) => return action_error(&ctx, &v, e.into_response()).await,
    };
    let list = |k: &str| inv[k].as_array().cloned().unwrap_or_default();
    let seams = list("seams")
        .iter()
        .map(|s| SeamRow {
            seam: text(&s["seam"]),
            pluggable: s["pluggable"].as_bool().unwrap_or(false),
            accepts: text(&s["accepts"]),
            active: s["active"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    let breaker = text(&a["breaker"]);
                    ActiveRow {
                        activation: text(&a["activation"]),
                        plugin: text(&a["plugin"]),
                        contribution: text(&a["contribution"]),
                        point: text(&a["point"]),
                        calls: text(&a["calls"]),
                        failures: text(&a["failures"]),
                        breaker_open: breaker != "closed",
                        breaker: if breaker == "closed" {
                            tr.t("breaker-closed")
                        } else {
                            breaker
                        },
                        last_error: text(&a["lastError"]),
                    }
                })
                .collect(),
        })
        .collect();
    let plugins = list("plugins")
        .iter()
        .map(|p| (text(&p["name"]), text(&p["version"]), text(&p["ready"])))
        .collect();
    let activations = list("activations")
        .iter()
        .map(|a| ActivationRow {
            name: text(&a["name"]),
            plugin: text(&a["plugin"]),
            requested: text(&a["grantsRequested"]),
            granted: text(&a["effectiveGrants"]),
            ungranted: text(&a["ungrantedRequests"]),
            ready: text(&a["ready"]),
        })
        .collect();
    let page = PluginsPage {
        b: Base::new(&ctx, &v, "plugins", "plugins-title", "/ui/plugins"),
        seams,
        plugins,
        activations,
    };
    respond(&v, &page, c.fragment.as_deref())
}

// ---- playground ----

#[derive(Template)]
#[template(path = "ui/playground.html")]
struct PlaygroundPage {
    b: Base,
    models: Vec<String>,
    model: String,
    prompt: String,
    /// The model answered (its reply may be empty).
    answered: bool,
    reply: String,
    error: String,
    curl: String,
    python: String,
}

async fn served_models(ctx: &ApiContext) -> Vec<String> {
    let r = super::super::openai::models(State(ctx.clone()))
        .await
        .into_response();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

fn equivalents(base: &str, model: &str, prompt: &str) -> (String, String) {
    let body =
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    let curl = format!(
        "curl -s {base}/v1/chat/completions \\\n  -H 'Content-Type: application/json' \\\n  -d '{}'",
        body.to_string().replace('\'', "'\\''")
    );
    let python = format!(
        "from openai import OpenAI\n\nclient = OpenAI(base_url=\"{base}/v1\", api_key=\"unused\")\n\
         reply = client.chat.completions.create(\n    model={model:?},\n    messages=[{{\"role\": \"user\", \"content\": {prompt:?}}}],\n)\n\
         print(reply.choices[0].message.content)"
    );
    (curl, python)
}

pub(super) async fn playground(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Query(c): Query<Common>,
) -> Response {
    let v = match viewer(&ctx, &headers, c.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let models = served_models(&ctx).await;
    let model = models.first().cloned().unwrap_or_default();
    let prompt = v.tr.t("playground-default-prompt");
    let (curl, python) = equivalents(&ctx.access.base_url(), &model, &prompt);
    let page = PlaygroundPage {
        b: Base::new(&ctx, &v, "playground", "playground-title", "/ui/playground"),
        models,
        model,
        prompt,
        answered: false,
        reply: String::new(),
        error: String::new(),
        curl,
        python,
    };
    respond(&v, &page, c.fragment.as_deref())
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    lang: Option<String>,
    model: String,
    prompt: String,
}

/// `POST /ui/playground`: one chat completion through the daemon's own `/v1` (the route the
/// curl and Python lines call), without streaming.
pub(super) async fn playground_post(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    Form(f): Form<ChatForm>,
) -> Response {
    let v = match viewer(&ctx, &headers, f.lang.as_deref()) {
        Ok(v) => v,
        Err(p) => return p,
    };
    if !form_allowed(&v, f.csrf.as_deref()) {
        return refused(&v);
    }
    let base = ctx.access.base_url();
    let body = serde_json::json!({
        "model": f.model,
        "messages": [{"role": "user", "content": f.prompt}],
        "max_tokens": 64,
    });
    let mut req = ctx
        .upstream
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .timeout(std::time::Duration::from_secs(120));
    if let Some(t) = &ctx.token {
        req = req.bearer_auth(t);
    }
    let (mut reply, mut error, mut answered) = (String::new(), String::new(), false);
    match req.send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            let j: Value = r.json().await.unwrap_or_default();
            if ok {
                answered = true;
                reply = text(&j["choices"][0]["message"]["content"]);
            } else {
                error = text(&j["error"]["message"]);
            }
        }
        Err(e) => error = e.to_string(),
    }
    let (curl, python) = equivalents(&base, &f.model, &f.prompt);
    let page = PlaygroundPage {
        b: Base::new(&ctx, &v, "playground", "playground-title", "/ui/playground"),
        models: served_models(&ctx).await,
        model: f.model,
        prompt: f.prompt,
        answered,
        reply,
        error,
        curl,
        python,
    };
    respond(&v, &page, None)
}
