//! Runtime benchmarks (`cargo bench --bench runtime`): start-to-healthy latency of a native
//! process and of a container, and the supervisor's own CPU while 50 native processes are
//! supervised idle (target: under 1% of one core). Prints figures; asserts nothing about speed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use localaistack::api::{Kind, ObjectName, module::Protocol};
use localaistack::control::store::Store;
use localaistack::home::LasHome;
use localaistack::runtime::docker::{DockerConfig, DockerRuntime};
use localaistack::runtime::native::{NativeConfig, NativeRuntime, SqliteNativeStore};
use localaistack::runtime::{
    Owner, OwnerKey, Port, Probe, ProbeAction, Program, Runtime, WorkloadSpec, WorkloadState,
};

const IMAGE: &str = "localaistack-test/busybox:1";

fn owner(name: &str) -> Owner {
    let n = format!("bench-{name}-{}", std::process::id());
    Owner::new(Kind::Module, ObjectName::new(&n).unwrap(), "bench")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probe(port: u16) -> Probe {
    Probe {
        action: ProbeAction::Http {
            port,
            path: "/index.html".into(),
        },
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        failure_threshold: 3,
    }
}

async fn until_ready(rt: &dyn Runtime, key: &OwnerKey) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Some(s) = rt.inspect(key).await.unwrap()
            && s.state == WorkloadState::Ready
        {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "never Ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

/// utime + stime of this process, in seconds.
fn own_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &text[text.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

async fn native_benches(home: &LasHome) {
    let rt = NativeRuntime::new(
        NativeConfig::for_home(home),
        Arc::new(SqliteNativeStore::open(&home.state_db()).unwrap()),
    );
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "ok").unwrap();

    let mut lat = Vec::new();
    for i in 0..5 {
        let port = free_port();
        let mut spec = WorkloadSpec::native(
            owner(&format!("httpd-{i}")),
            vec![
                "/bin/busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                format!("127.0.0.1:{port}"),
                "-h".into(),
                www.path().display().to_string(),
            ],
        );
        spec.probe = Some(probe(port));
        let key = spec.owner.key();
        let t0 = Instant::now();
        rt.ensure(&spec).await.unwrap();
        until_ready(&rt, &key).await;
        lat.push(t0.elapsed());
        rt.remove(&key, Duration::from_secs(2)).await.unwrap();
    }
    summary("native start-to-healthy (busybox httpd, http probe)", lat);

    let n = 50;
    let mut keys = Vec::new();
    for i in 0..n {
        let spec = WorkloadSpec::native(
            owner(&format!("idle-{i}")),
            vec!["sleep".into(), "3600".into()],
        );
        rt.ensure(&spec).await.unwrap();
        keys.push(spec.owner.key());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = Duration::from_secs(10);
    let c0 = own_cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let used = own_cpu_seconds() - c0;
    let pct = used / t0.elapsed().as_secs_f64() * 100.0;
    let running = {
        let mut r = 0;
        for k in &keys {
            if rt
                .inspect(k)
                .await
                .unwrap()
                .is_some_and(|s| s.state.is_running())
            {
                r += 1;
            }
        }
        r
    };
    println!(
        "supervisor CPU with {n} idle native processes ({running} running): {pct:.3}% of one core over {:.0} s (target < 1%)",
        window.as_secs_f64()
    );
    let t0 = Instant::now();
    for k in &keys {
        rt.remove(k, Duration::from_secs(2)).await.unwrap();
    }
    println!(
        "stopping {n} processes: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

async fn import_image(d: &DockerRuntime) {
    if d.client().inspect_image(IMAGE).await.is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["bin", "www", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("www/index.html"), "container-ok\n").unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let (repo, tag) = IMAGE.rsplit_once(':').unwrap();
    d.client()
        .create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_src: Some("-".into()),
                repo: Some(repo.into()),
                tag: Some(tag.into()),
                ..Default::default()
            }),
            Some(bollard::body_full(tar.stdout.into())),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

async fn docker_benches() {
    let rt = match DockerRuntime::connect(DockerConfig::default()).await {
        Ok(rt) => rt,
        Err(e) => {
            println!("container start-to-healthy: SKIPPED (no Docker engine: {e})");
            return;
        }
    };
    import_image(&rt).await;
    let mut lat = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let mut spec = WorkloadSpec::container(owner(&format!("ctr-{i}")), IMAGE);
        spec.program = Program::Container {
            image: IMAGE.into(),
            command: vec!["/bin/busybox".into(), "httpd".into()],
            args: vec![
                "-f".into(),
                "-p".into(),
                "80".into(),
                "-h".into(),
                "/www".into(),
            ],
        };
        spec.ports = vec![Port {
            container_port: 80,
            host_port: port,
            protocol: Protocol::Tcp,
        }];
        spec.probe = Some(probe(port));
        let key = spec.owner.key();
        let t0 = Instant::now();
        rt.ensure(&spec).await.unwrap();
        until_ready(&rt, &key).await;
        lat.push(t0.elapsed());
        rt.remove(&key, Duration::from_secs(1)).await.unwrap();
    }
    summary(
        "container start-to-healthy (busybox httpd, image present, http probe)",
        lat,
    );
}

fn main() {
    if !Path::new("/bin/busybox").exists() {
        eprintln!("runtime bench needs /bin/busybox (busybox-static): run make deps");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let home = LasHome::at(dir.path());
    home.ensure().unwrap();
    drop(Store::open(&home.state_db()).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        native_benches(&home).await;
        docker_benches().await;
    });
}
