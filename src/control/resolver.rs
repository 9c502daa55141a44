//! The resolver: from `Module.spec.from` + `version` and the catalog to pinned versions, a
//! dependency order, and the lock file.
//!
//! # Guarantees
//! - One version per catalog module: the highest that satisfies every requirement on it (the
//!   roots' and the dependencies' of the versions chosen), or the locked version when it still
//!   satisfies them and `update` is false.
//! - Deterministic: inputs are visited in sorted order; the same requests, catalog and lock give
//!   the same [`Resolution`].
//! - [`Resolution::order`] lists dependencies before their dependents.
//! - Every cycle is reported (one per strongly connected component, as a chain `a → b → a`), and
//!   conflicts and unsatisfiable requirements name the chain of requirers that caused them.
//!
//! # Caveats
//! - Selection iterates to a fixed point rather than backtracking: when the highest version of a
//!   module pulls in a requirement that cannot be met, the resolver reports it instead of trying
//!   an older version. Pin the older version with `version:` in that case.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifacts::catalog::Catalog;

/// One root requirement: a Module object asking for a catalog module.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The Module object's name (for messages: `module/NAME`).
    pub object: String,
    /// The catalog module (`spec.from`).
    pub from: String,
    /// `spec.version`; `*` when omitted.
    pub version: semver::VersionReq,
}

/// A module at its chosen version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pinned {
    pub name: String,
    pub version: String,
    /// `image@sha256:…`, `url#sha256=…` or `builtin:llama`.
    pub artifact: String,
    pub dependencies: Vec<String>,
    /// How this module came to be required: `module/NAME → a@1.0.0 → this`.
    pub chain: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub modules: BTreeMap<String, Pinned>,
    /// Dependencies first.
    pub order: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{} requires module {name}, which is not in the catalog", chain.join(" → "))]
    UnknownModule { name: String, chain: Vec<String> },
    #[error(
        "no version of {name} satisfies every requirement: {}; the catalog has {}",
        requirements.iter().map(|(r, by)| format!("{r} (from {by})")).collect::<Vec<_>>().join(", "),
        if available.is_empty() { "no versions".to_string() } else { available.join(", ") }
    )]
    Unsatisfiable {
        name: String,
        requirements: Vec<(String, String)>,
        available: Vec<String>,
    },
    #[error(
        "{a} conflicts with {b}: {reason} ({} ; {})",
        a_chain.join(" → "), b_chain.join(" → ")
    )]
    Conflict {
        a: String,
        b: String,
        reason: String,
        a_chain: Vec<String>,
        b_chain: Vec<String>,
    },
    #[error("dependency cycle{}: {}", if cycles.len() > 1 { "s" } else { "" },
        cycles.iter().map(|c| c.join(" → ")).collect::<Vec<_>>().join("; "))]
    Cycles { cycles: Vec<Vec<String>> },
    #[error(
        "las.lock pins {name} {version} ({locked}), but the catalog now has {found}: run lasctl lock --update to accept the catalog's"
    )]
    LockMismatch {
        name: String,
        version: String,
        locked: String,
        found: String,
    },
    #[error("resolution did not settle after {0} rounds; pin versions with `version:`")]
    NoFixedPoint(usize),
}

/// The lock file `las.lock`: exact versions and artifacts of the last resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LockFile {
    pub lock_version: u32,
    pub modules: Vec<LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LockEntry {
    pub name: String,
    pub version: String,
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}: fix or delete it, then run lasctl lock -f PATH again")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The lock file's name.
pub const LOCK_FILE: &str = "las.lock";

/// Where the lock of an apply of `paths` lives: `las.lock` in the first PATH when it is a
/// directory, else beside the first file. None for stdin.
pub fn lock_path_for(paths: &[PathBuf]) -> Option<PathBuf> {
    let first = paths.first()?;
    if first.as_os_str() == "-" {
        return None;
    }
    if first.is_dir() {
        Some(first.join(LOCK_FILE))
    } else {
        Some(
            first
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(LOCK_FILE),
        )
    }
}

impl LockFile {
    pub fn from_resolution(r: &Resolution) -> LockFile {
        LockFile {
            lock_version: 1,
            modules: r
                .modules
                .values()
                .map(|p| LockEntry {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    artifact: p.artifact.clone(),
                    dependencies: p.dependencies.clone(),
                })
                .collect(),
        }
    }

    /// Reads a lock file; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let lock: LockFile = serde_yaml::from_str(&text).map_err(|e| LockError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        if lock.lock_version != 1 {
            return Err(LockError::Parse {
                path: path.into(),
                message: format!(
                    "lockVersion {} is not supported (expected 1)",
                    lock.lock_version
                ),
            });
        }
        Ok(Some(lock))
    }

    pub fn to_text(&self) -> String {
        format!(
            "# las.lock: written by lasctl apply and lasctl lock; exact versions and artifacts of the resolved modules.\n# Commit it. `lasctl lock --update` re-resolves.\n{}",
            serde_yaml::to_string(self).expect("lock files serialize")
        )
    }

    /// Writes atomically (a temporary file renamed over the old one).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, self.to_text())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| LockError::Write {
                path: path.into(),
                source,
            })
    }

    fn entry(&self, name: &str) -> Option<&LockEntry> {
        self.modules.iter().find(|e| e.name == name)
    }
}

/// Resolves `requests` against `catalog`. With a `lock` and `update == false`, locked versions are
/// kept while they satisfy the requirements.
pub fn resolve(
    requests: &[Request],
    catalog: &Catalog,
    lock: Option<&LockFile>,
    update: bool,
) -> Result<Resolution, ResolveError> {
    let lock = if update { None } else { lock };
    let mut roots: Vec<&Request> = requests.iter().collect();
    roots.sort_by(|a, b| (&a.object, &a.from).cmp(&(&b.object, &b.from)));
    let mut chosen: BTreeMap<String, semver::Version> = BTreeMap::new();
    let limit = catalog.len() * 2 + 10;
    for _ in 0..limit {
        // The walk picks provisional versions for modules it meets for the first time, so a
        // consistent catalog settles in one or two rounds instead of one round per level.
        let mut provisional = chosen.clone();
        let walk = walk(&roots, catalog, &mut provisional, lock)?;
        let mut next = BTreeMap::new();
        for (name, reqs) in &walk.requirements {
            next.insert(name.clone(), pick(name, reqs, catalog, lock)?);
        }
        // The walk followed the provisional versions: when the final picks equal them, the
        // requirements they induce are exactly those just checked, a fixed point.
        if next == provisional {
            return finish(catalog, &next, &walk.chains);
        }
        chosen = next;
    }
    Err(ResolveError::NoFixedPoint(limit))
}

/// The version of `name` to use under `reqs`: the locked one while it satisfies them, else the
/// highest that does.
fn pick(
    name: &str,
    reqs: &[(semver::VersionReq, String)],
    catalog: &Catalog,
    lock: Option<&LockFile>,
) -> Result<semver::Version, ResolveError> {
    let module = catalog.get(name).expect("walk checked existence");
    let ok = |v: &semver::Version| reqs.iter().all(|(r, _)| r.matches(v));
    let highest = || {
        module
            .spec
            .versions
            .iter()
            .map(|m| &m.version.0)
            .find(|v| ok(v))
            .cloned()
    };
    let locked = lock.and_then(|l| l.entry(name)).and_then(|e| {
        let v = semver::Version::parse(&e.version).ok()?;
        ok(&v).then_some((v, e))
    });
    let picked = match locked {
        Some((v, e)) => match module.version(&v) {
            Some(m) if m.artifact() == e.artifact => Some(v),
            Some(m) => {
                return Err(ResolveError::LockMismatch {
                    name: name.to_string(),
                    version: e.version.clone(),
                    locked: e.artifact.clone(),
                    found: m.artifact(),
                });
            }
            // The locked version left the catalog: re-resolve this module.
            None => highest(),
        },
        None => highest(),
    };
    picked.ok_or_else(|| ResolveError::Unsatisfiable {
        name: name.to_string(),
        requirements: reqs
            .iter()
            .map(|(r, by)| (r.to_string(), by.clone()))
            .collect(),
        available: module
            .spec
            .versions
            .iter()
            .map(|m| m.version.to_string())
            .collect(),
    })
}

struct Walk {
    requirements: BTreeMap<String, Vec<(semver::VersionReq, String)>>,
    chains: BTreeMap<String, Vec<String>>,
}

/// Breadth-first from the roots over the currently chosen versions: who requires what.
fn walk(
    roots: &[&Request],
    catalog: &Catalog,
    chosen: &mut BTreeMap<String, semver::Version>,
    lock: Option<&LockFile>,
) -> Result<Walk, ResolveError> {
    let mut requirements: BTreeMap<String, Vec<(semver::VersionReq, String)>> = BTreeMap::new();
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue = VecDeque::new();
    for r in roots {
        let by = format!("module/{}", r.object);
        if catalog.get(&r.from).is_none() {
            return Err(ResolveError::UnknownModule {
                name: r.from.clone(),
                chain: vec![by],
            });
        }
        requirements
            .entry(r.from.clone())
            .or_default()
            .push((r.version.clone(), by.clone()));
        if !chains.contains_key(&r.from) {
            chains.insert(r.from.clone(), vec![by]);
            queue.push_back(r.from.clone());
        }
    }
    while let Some(name) = queue.pop_front() {
        if !chosen.contains_key(&name) {
            // Unsatisfiable so far is not final: the end of the round reports it with every
            // requirement.
            match pick(&name, &requirements[&name], catalog, lock) {
                Ok(v) => {
                    chosen.insert(name.clone(), v);
                }
                Err(_) => continue,
            }
        }
        let v = chosen[&name].clone();
        let Some(m) = catalog.get(&name).and_then(|m| m.version(&v)) else {
            continue;
        };
        let label = format!("{name}@{v}");
        let mut chain = chains[&name].clone();
        chain.push(label.clone());
        for d in &m.dependencies {
            let dn = d.name.to_string();
            if catalog.get(&dn).is_none() {
                let mut c = chain.clone();
                c.push(dn.clone());
                return Err(ResolveError::UnknownModule { name: dn, chain: c });
            }
            requirements
                .entry(dn.clone())
                .or_default()
                .push((d.version.0.clone(), label.clone()));
            if !chains.contains_key(&dn) {
                chains.insert(dn.clone(), chain.clone());
                queue.push_back(dn);
            }
        }
    }
    Ok(Walk {
        requirements,
        chains,
    })
}

fn finish(
    catalog: &Catalog,
    chosen: &BTreeMap<String, semver::Version>,
    chains: &BTreeMap<String, Vec<String>>,
) -> Result<Resolution, ResolveError> {
    let mut modules = BTreeMap::new();
    for (name, v) in chosen {
        let m = catalog
            .get(name)
            .and_then(|m| m.version(v))
            .expect("chosen versions exist");
        let mut deps: Vec<String> = m.dependencies.iter().map(|d| d.name.to_string()).collect();
        deps.sort();
        let mut chain = chains.get(name).cloned().unwrap_or_default();
        chain.push(format!("{name}@{v}"));
        modules.insert(
            name.clone(),
            Pinned {
                name: name.clone(),
                version: v.to_string(),
                artifact: m.artifact(),
                dependencies: deps,
                chain,
            },
        );
    }
    let graph: BTreeMap<&str, Vec<&str>> = modules
        .values()
        .map(|p| {
            (
                p.name.as_str(),
                p.dependencies.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let cycles = find_cycles(&graph);
    if !cycles.is_empty() {
        return Err(ResolveError::Cycles { cycles });
    }
    // Conflicts, in name order.
    for (name, v) in chosen {
        let m = catalog
            .get(name)
            .and_then(|m| m.version(v))
            .expect("exists");
        for c in &m.conflicts {
            if let Some(other) = chosen.get(c.name.as_str())
                && c.name.as_str() != name
                && c.version.0.matches(other)
            {
                return Err(ResolveError::Conflict {
                    a: format!("{name}@{v}"),
                    b: format!("{}@{other}", c.name),
                    reason: c.reason.clone(),
                    a_chain: modules[name].chain.clone(),
                    b_chain: modules[c.name.as_str()].chain.clone(),
                });
            }
        }
    }
    let order = topo_order(&graph);
    Ok(Resolution { modules, order })
}

/// Every cycle of a graph: one chain per strongly connected component with a cycle, starting and
/// ending at the component's smallest node (`a → b → a`). Sorted.
pub fn find_cycles(graph: &BTreeMap<&str, Vec<&str>>) -> Vec<Vec<String>> {
    let sccs = tarjan(graph);
    let mut out = Vec::new();
    for scc in sccs {
        let set: BTreeSet<&str> = scc.iter().copied().collect();
        let start = *set.iter().next().expect("non-empty");
        let self_loop = graph.get(start).is_some_and(|d| d.contains(&start));
        if set.len() == 1 && !self_loop {
            continue;
        }
        // Shortest path from start back to start inside the component.
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut end = None;
        'bfs: while let Some(n) = queue.pop_front() {
            let mut next: Vec<&str> = graph.get(n).cloned().unwrap_or_default();
            next.sort();
            for d in next {
                if d == start {
                    end = Some(n);
                    break 'bfs;
                }
                if set.contains(d) && !prev.contains_key(d) {
                    prev.insert(d, n);
                    queue.push_back(d);
                }
            }
        }
        let mut path = vec![start.to_string()];
        let mut n = end.expect("a component with a cycle leads back to its start");
        let mut back = Vec::new();
        while n != start {
            back.push(n.to_string());
            n = prev[n];
        }
        back.reverse();
        path.extend(back);
        path.push(start.to_string());
        out.push(path);
    }
    out.sort();
    out
}

/// Tarjan's strongly connected components, iterative (deep graphs do not overflow the stack).
fn tarjan<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut low: BTreeMap<&str, usize> = BTreeMap::new();
    let mut on_stack: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut next = 0usize;
    let empty: Vec<&str> = Vec::new();
    for &root in graph.keys() {
        if index.contains_key(root) {
            continue;
        }
        // (node, position in its edge list)
        let mut work: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some(top) = work.last_mut() {
            let (v, i) = *top;
            if i == 0 && !index.contains_key(v) {
                index.insert(v, next);
                low.insert(v, next);
                next += 1;
                stack.push(v);
                on_stack.insert(v);
            }
            let edges = graph.get(v).unwrap_or(&empty);
            if i < edges.len() {
                top.1 += 1;
                let w = edges[i];
                if !index.contains_key(w) {
                    if graph.contains_key(w) {
                        work.push((w, 0));
                    }
                } else if on_stack.contains(w) {
                    let lw = index[w];
                    let lv = low.get_mut(v).expect("indexed");
                    *lv = (*lv).min(lw);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                let lv = low[v];
                let lp = low.get_mut(parent).expect("indexed");
                *lp = (*lp).min(lv);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = stack.pop().expect("on stack");
                    on_stack.remove(w);
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}

/// Kahn's algorithm with a sorted ready set: dependencies first, ties by name.
fn topo_order(graph: &BTreeMap<&str, Vec<&str>>) -> Vec<String> {
    let mut remaining: BTreeMap<&str, usize> = graph
        .iter()
        .map(|(n, d)| (*n, d.iter().filter(|x| graph.contains_key(**x)).count()))
        .collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, ds) in graph {
        for d in ds {
            dependents.entry(*d).or_default().push(*n);
        }
    }
    let mut ready: BTreeSet<&str> = remaining
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::new();
    while let Some(n) = ready.pop_first() {
        out.push(n.to_string());
        for m in dependents.get(n).cloned().unwrap_or_default() {
            let c = remaining.get_mut(m).expect("node");
            *c -= 1;
            if *c == 0 {
                ready.insert(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectName;
    use crate::api::module::VersionReq;
    use crate::artifacts::catalog::{
        CatalogModule, Conflict, Dependency, EngineArtifact, ManifestSpec, ManifestVersion, Version,
    };

    fn version(v: &str, deps: &[(&str, &str)]) -> ManifestVersion {
        ManifestVersion {
            version: Version(semver::Version::parse(v).unwrap()),
            engine: Some(EngineArtifact {
                type_: Default::default(),
            }),
            dependencies: deps
                .iter()
                .map(|(n, r)| Dependency {
                    name: ObjectName::new(n).unwrap(),
                    version: VersionReq(semver::VersionReq::parse(r).unwrap()),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn module(name: &str, versions: Vec<ManifestVersion>) -> CatalogModule {
        CatalogModule::new(
            name,
            ManifestSpec {
                description: String::new(),
                versions,
                ..Default::default()
            },
            "t",
        )
    }

    fn req(obj: &str, from: &str, v: &str) -> Request {
        Request {
            object: obj.into(),
            from: from.into(),
            version: semver::VersionReq::parse(v).unwrap(),
        }
    }

    #[test]
    fn picks_highest_satisfying_all_and_orders_dependencies_first() {
        let cat = Catalog::from_modules([
            module(
                "ui",
                vec![
                    version("1.2.0", &[("db", ">=1.0, <2.0")]),
                    version("2.0.0", &[("db", "^2")]),
                ],
            ),
            module(
                "db",
                vec![
                    version("1.0.0", &[]),
                    version("1.5.0", &[]),
                    version("2.1.0", &[]),
                ],
            ),
        ]);
        let r = resolve(&[req("web", "ui", "^1")], &cat, None, false).unwrap();
        assert_eq!(r.modules["ui"].version, "1.2.0");
        assert_eq!(r.modules["db"].version, "1.5.0");
        assert_eq!(r.order, vec!["db", "ui"]);
        assert_eq!(
            r.modules["db"].chain,
            vec!["module/web", "ui@1.2.0", "db@1.5.0"]
        );
        // A second root narrows db further.
        let r = resolve(
            &[req("web", "ui", "^1"), req("store", "db", "<1.2")],
            &cat,
            None,
            false,
        )
        .unwrap();
        assert_eq!(r.modules["db"].version, "1.0.0");
    }

    #[test]
    fn unsatisfiable_names_every_requirer() {
        let cat = Catalog::from_modules([
            module("ui", vec![version("1.0.0", &[("db", "^2")])]),
            module("db", vec![version("1.0.0", &[])]),
        ]);
        let e = resolve(&[req("web", "ui", "*")], &cat, None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no version of db satisfies every requirement: ^2 (from ui@1.0.0); the catalog has 1.0.0"
        );
    }

    #[test]
    fn conflicts_show_both_chains() {
        let mut a = version("1.0.0", &[]);
        a.conflicts.push(Conflict {
            name: ObjectName::new("b").unwrap(),
            version: VersionReq(semver::VersionReq::STAR),
            reason: "both bind port 8080".into(),
        });
        let cat = Catalog::from_modules([
            module("a", vec![a]),
            module("b", vec![version("1.0.0", &[])]),
            module("c", vec![version("1.0.0", &[("b", "*")])]),
        ]);
        let e = resolve(&[req("x", "a", "*"), req("y", "c", "*")], &cat, None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a@1.0.0 conflicts with b@1.0.0: both bind port 8080 (module/x → a@1.0.0 ; module/y → c@1.0.0 → b@1.0.0)"
        );
    }

    #[test]
    fn cycles_are_reported_as_chains() {
        let cat = Catalog::from_modules([
            module("a", vec![version("1.0.0", &[("b", "*")])]),
            module("b", vec![version("1.0.0", &[("c", "*")])]),
            module("c", vec![version("1.0.0", &[("a", "*")])]),
            module("d", vec![version("1.0.0", &[("d", "*")])]),
        ]);
        let e = resolve(&[req("x", "a", "*"), req("y", "d", "*")], &cat, None, false).unwrap_err();
        assert_eq!(e.to_string(), "dependency cycles: a → b → c → a; d → d");
    }

    #[test]
    fn lock_keeps_versions_until_update() {
        let cat1 = Catalog::from_modules([module("db", vec![version("1.0.0", &[])])]);
        let r1 = resolve(&[req("s", "db", "^1")], &cat1, None, false).unwrap();
        let lock = LockFile::from_resolution(&r1);
        let cat2 = Catalog::from_modules([module(
            "db",
            vec![version("1.0.0", &[]), version("1.1.0", &[])],
        )]);
        let r2 = resolve(&[req("s", "db", "^1")], &cat2, Some(&lock), false).unwrap();
        assert_eq!(r2.modules["db"].version, "1.0.0");
        let r3 = resolve(&[req("s", "db", "^1")], &cat2, Some(&lock), true).unwrap();
        assert_eq!(r3.modules["db"].version, "1.1.0");
        let text = lock.to_text();
        let back: LockFile = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, lock);
    }
}
