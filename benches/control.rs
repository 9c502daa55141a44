//! `cargo bench --bench control`: resolving a 500-module catalog with 2,000 dependency edges
//! (target < 50 ms) and a live hardware probe (target < 200 ms). Prints figures.

use std::time::{Duration, Instant};

use localaistack::api::ObjectName;
use localaistack::api::module::VersionReq;
use localaistack::artifacts::catalog::{
    Catalog, CatalogModule, Dependency, EngineArtifact, ManifestSpec, ManifestVersion, Version,
};
use localaistack::control::hardware::{HardwareProbe, LiveProbe};
use localaistack::control::resolver::{Request, resolve};

/// A deterministic pseudo-random sequence (xorshift), so every run benches the same catalog.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn catalog(modules: usize, edges: usize) -> (Catalog, usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut deps: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); modules];
    let mut count = 0;
    while count < edges {
        let a = (rng.next() as usize) % (modules - 1);
        let b = a + 1 + (rng.next() as usize) % (modules - a - 1);
        if deps[a].insert(b) {
            count += 1;
        }
    }
    let cat = Catalog::from_modules((0..modules).map(|i| {
        let versions = (0..3u64)
            .map(|minor| ManifestVersion {
                version: Version(semver::Version::new(1, minor, 0)),
                engine: Some(EngineArtifact {
                    type_: Default::default(),
                }),
                dependencies: deps[i]
                    .iter()
                    .map(|j| Dependency {
                        name: ObjectName::new(&format!("m{j}")).unwrap(),
                        version: VersionReq(semver::VersionReq::parse("^1.1").unwrap()),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        CatalogModule::new(
            format!("m{i}"),
            ManifestSpec {
                description: String::new(),
                versions,
                ..Default::default()
            },
            "bench",
        )
    }));
    (cat, count)
}

fn stats(name: &str, target: Duration, mut f: impl FnMut()) {
    f(); // warm up
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < Duration::from_secs(3) && times.len() < 50) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{name}: median {:.2} ms, min {:.2} ms, max {:.2} ms over {} runs (target < {} ms): {}",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len(),
        target.as_millis(),
        if median < target { "ok" } else { "OVER TARGET" }
    );
}

fn main() {
    let (cat, edges) = catalog(500, 2000);
    let requests: Vec<Request> = (0..500)
        .map(|i| Request {
            object: format!("o{i}"),
            from: format!("m{i}"),
            version: semver::VersionReq::STAR,
        })
        .collect();
    let r = resolve(&requests, &cat, None, false).expect("the bench catalog resolves");
    assert_eq!(r.modules.len(), 500);
    println!(
        "catalog: {} modules, {edges} dependency edges, 3 versions each",
        cat.len()
    );
    stats(
        "resolve 500 modules / 2000 edges",
        Duration::from_millis(50),
        || {
            let r = resolve(&requests, &cat, None, false).unwrap();
            std::hint::black_box(r);
        },
    );
    stats("live hardware probe", Duration::from_millis(200), || {
        let p = LiveProbe::default().probe().unwrap();
        std::hint::black_box(p);
    });
}
