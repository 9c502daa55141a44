//! Property tests of the resolver over random catalogs: the order respects dependencies, every
//! cycle is found, chosen versions are the highest that satisfy every requirement, and results
//! are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use localaistack::api::ObjectName;
use localaistack::api::module::VersionReq;
use localaistack::artifacts::catalog::{
    Catalog, CatalogModule, Dependency, EngineArtifact, ManifestSpec, ManifestVersion, Version,
};
use localaistack::control::resolver::{Request, ResolveError, resolve};
use proptest::prelude::*;

fn name(i: usize) -> String {
    format!("m{i}")
}

/// A catalog of `n` modules with one version each and the given edges (i depends on j).
fn graph_catalog(n: usize, edges: &[(usize, usize)]) -> Catalog {
    Catalog::from_modules((0..n).map(|i| {
        let deps: BTreeSet<usize> = edges
            .iter()
            .filter(|(a, _)| *a == i)
            .map(|(_, b)| *b)
            .collect();
        CatalogModule::new(
            name(i),
            ManifestSpec {
                description: String::new(),
                versions: vec![ManifestVersion {
                    version: Version(semver::Version::new(1, 0, 0)),
                    engine: Some(EngineArtifact {
                        type_: Default::default(),
                    }),
                    dependencies: deps
                        .into_iter()
                        .map(|j| Dependency {
                            name: ObjectName::new(&name(j)).unwrap(),
                            version: VersionReq(semver::VersionReq::STAR),
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "prop",
        )
    }))
}

fn roots(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            object: format!("o{i}"),
            from: name(i),
            version: semver::VersionReq::STAR,
        })
        .collect()
}

/// Nodes reachable from `from` in one or more steps.
fn reach(n: usize, edges: &[(usize, usize)], from: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = edges
        .iter()
        .filter(|(a, _)| *a == from)
        .map(|(_, b)| *b)
        .collect();
    while let Some(x) = stack.pop() {
        if x < n && seen.insert(x) {
            stack.extend(edges.iter().filter(|(a, _)| *a == x).map(|(_, b)| *b));
        }
    }
    seen
}

fn edges_strategy() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (1usize..24).prop_flat_map(|n| (Just(n), prop::collection::vec((0..n, 0..n), 0..(n * 3))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn order_respects_dependencies_and_every_cycle_is_found((n, edges) in edges_strategy()) {
        let cat = graph_catalog(n, &edges);
        let result = resolve(&roots(n), &cat, None, false);
        // Brute force: nodes on a cycle, grouped by mutual reachability.
        let reaches: Vec<BTreeSet<usize>> = (0..n).map(|i| reach(n, &edges, i)).collect();
        let cyclic: Vec<usize> = (0..n).filter(|i| reaches[*i].contains(i)).collect();
        let mut groups: Vec<BTreeSet<usize>> = Vec::new();
        for &v in &cyclic {
            if groups.iter().any(|g| g.contains(&v)) { continue; }
            groups.push(cyclic.iter().copied().filter(|w| *w == v || (reaches[v].contains(w) && reaches[*w].contains(&v))).collect());
        }
        match result {
            Ok(r) => {
                prop_assert!(cyclic.is_empty(), "cycles missed: {:?}", cyclic);
                prop_assert_eq!(r.order.len(), n);
                let pos: BTreeMap<&str, usize> = r.order.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
                for (a, b) in &edges {
                    prop_assert!(pos[name(*b).as_str()] < pos[name(*a).as_str()], "{} must come before {}", name(*b), name(*a));
                }
            }
            Err(ResolveError::Cycles { cycles }) => {
                prop_assert_eq!(cycles.len(), groups.len(), "one cycle per cyclic component: {:?} vs {:?}", cycles, groups);
                for c in &cycles {
                    prop_assert_eq!(c.first(), c.last());
                    for w in c.windows(2) {
                        let a: usize = w[0][1..].parse().unwrap();
                        let b: usize = w[1][1..].parse().unwrap();
                        prop_assert!(edges.contains(&(a, b)), "{} → {} is not an edge", w[0], w[1]);
                    }
                    let nodes: BTreeSet<usize> = c.iter().map(|s| s[1..].parse().unwrap()).collect();
                    prop_assert!(groups.iter().any(|g| nodes.is_subset(g)));
                }
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn results_are_deterministic((n, edges) in edges_strategy(), seed in any::<u64>()) {
        let cat = graph_catalog(n, &edges);
        let mut reqs = roots(n);
        let a = resolve(&reqs, &cat, None, false);
        // Another order of the same requests gives the same answer.
        let k = (seed as usize) % reqs.len().max(1);
        reqs.rotate_left(k);
        reqs.reverse();
        let b = resolve(&reqs, &cat, None, false);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn chosen_versions_are_the_highest_satisfying_all(
        n in 2usize..10,
        versions in prop::collection::vec(prop::collection::btree_set((0u64..4, 0u64..4), 1..4), 10),
        deps in prop::collection::vec((0usize..10, 0usize..10, 0u64..4, 0u64..4), 0..20),
        root_major in 0u64..4,
    ) {
        // Acyclic: i depends only on j > i. Requirements are `^maj.min`.
        let cat = Catalog::from_modules((0..n).map(|i| {
            let vs = versions[i].iter().map(|(maj, min)| ManifestVersion {
                version: Version(semver::Version::new(*maj, *min, 0)),
                engine: Some(EngineArtifact { type_: Default::default() }),
                dependencies: deps.iter().filter(|(a, b, _, _)| *a == i && *b > i && *b < n)
                    .map(|(_, b, maj, min)| (*b, (*maj, *min)))
                    .collect::<BTreeMap<_, _>>().into_iter()
                    .map(|(b, (maj, min))| Dependency {
                        name: ObjectName::new(&name(b)).unwrap(),
                        version: VersionReq(semver::VersionReq::parse(&format!(">={maj}.{min}.0")).unwrap()),
                    })
                    .collect(),
                ..Default::default()
            }).collect();
            CatalogModule::new(name(i), ManifestSpec { description: String::new(), versions: vs, ..Default::default() }, "p")
        }));
        let req = vec![Request { object: "root".into(), from: name(0), version: semver::VersionReq::parse(&format!(">={root_major}.0.0")).unwrap() }];
        if let Ok(r) = resolve(&req, &cat, None, false) {
            // Every requirement on each chosen module, from the root and the chosen versions.
            let mut reqs: BTreeMap<String, Vec<semver::VersionReq>> = BTreeMap::new();
            reqs.entry(name(0)).or_default().push(req[0].version.clone());
            for p in r.modules.values() {
                let v = semver::Version::parse(&p.version).unwrap();
                for d in &cat.get(&p.name).unwrap().version(&v).unwrap().dependencies {
                    reqs.entry(d.name.to_string()).or_default().push(d.version.0.clone());
                }
            }
            for (m, rs) in &reqs {
                let chosen = semver::Version::parse(&r.modules[m].version).unwrap();
                prop_assert!(rs.iter().all(|q| q.matches(&chosen)), "{m} {chosen} violates {rs:?}");
                let best = cat.get(m).unwrap().spec.versions.iter().map(|v| v.version.0.clone())
                    .filter(|v| rs.iter().all(|q| q.matches(v))).max().unwrap();
                prop_assert_eq!(&chosen, &best, "{} is not the highest satisfying version", m);
            }
        }
    }
}
