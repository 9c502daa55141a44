//! The web console in a real browser: Debian's `chromium` driven through `chromedriver` with
//! fantoccini (from `cargo test`, so it runs wherever the other end-to-end tests run, with no
//! Python or npm), against the real `lasctl daemon` serving the tiny generated model.
//!
//! For each shipped locale (chosen through the browser's Accept-Language): a resource applied
//! through the API appears without a reload; the rollback button records exactly one new
//! generation; the plan page shows a refusal for a model that does not fit; the playground gets a
//! reply from the tiny model; the browser logs no console error; no request leaves 127.0.0.1.
//! A second session with JavaScript disabled plans, applies, filters and rolls back with forms.
//! A screenshot of every page in every locale is saved under `target/ui-screenshots/`.
//!
//! Without `chromium` and `chromedriver` the test fails (install them with `bash deps/install.sh`);
//! it never skips.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::daemon::{Daemon, free_port, wait_ready, wait_until};
use support::{ChildGuard, FreshEnv, model_doc};

const CHROMIUM: &str = "/usr/bin/chromium";

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// `chromedriver` on a free port (killed on drop).
fn chromedriver() -> (ChildGuard, u16) {
    let bin = which("chromedriver").unwrap_or_else(|| {
        panic!("chromedriver is not installed: run `bash deps/install.sh` (Debian packages chromium and chromium-driver)")
    });
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is not installed: run `bash deps/install.sh` (Debian package chromium)"
    );
    let port = free_port();
    let mut c = Command::new(bin);
    c.arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let g = ChildGuard::spawn(c);
    wait_until("chromedriver listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (g, port)
}

/// A headless Chromium session that asks for `lang` (Accept-Language), with or without JavaScript.
async fn browser(driver: u16, lang: &str, js: bool) -> Client {
    let mut prefs = json!({"intl": {"accept_languages": lang}});
    if !js {
        prefs["profile"] = json!({"managed_default_content_settings": {"javascript": 2}});
    }
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps",
                     "--disable-extensions", "--no-proxy-server"],
            "prefs": prefs,
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let caps: serde_json::Map<String, Value> = serde_json::from_value(caps).unwrap();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver}"))
        .await
        .expect("a chromedriver session")
}

/// chromedriver's browser log (`POST /session/{id}/se/log`): every entry since the last call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

async fn console_errors(c: &Client) -> Vec<String> {
    let v = c.issue_cmd(BrowserLog).await.expect("the browser log");
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every URL the page loaded (its resources and itself).
async fn requested_urls(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "return performance.getEntries().map(e => e.name).filter(n => /^[a-z]+:/.test(n)).concat([location.href]);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

fn screenshots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn apply(&self, yaml: &str) -> Value {
        let r = self
            .http
            .post(format!("{}/api/v1/apply", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "apply: {}", r.status());
        r.json().await.unwrap()
    }

    async fn exists(&self, kind: &str, name: &str) -> bool {
        self.http
            .get(format!("{}/api/v1/{kind}/{name}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    }
}

fn generations(env: &FreshEnv) -> Vec<u64> {
    let r = env.run(&["history", "-o", "json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| g["number"].as_u64().unwrap())
        .collect()
}

async fn login(c: &Client, env: &FreshEnv) {
    let url = env.run(&["ui"]).ok().stdout.trim().to_string();
    c.goto(&url).await.unwrap();
    let now = c.current_url().await.unwrap();
    assert!(now.path() == "/ui/", "the login link lands on /ui/: {now}");
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks the element `css` finds; found again when a live refresh replaced it in between.
async fn click(c: &Client, css: &str) {
    let mut last = None;
    for _ in 0..20 {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(err) => last = Some(err.to_string()),
            },
            Err(err) => last = Some(err.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot click {css}: {last:?}");
}

const PAGES: &[(&str, &str)] = &[
    ("overview", "/ui/"),
    ("resources", "/ui/resources"),
    ("object", "/ui/resources/modules/chat"),
    ("events", "/ui/events"),
    ("history", "/ui/history"),
    ("plan", "/ui/plan"),
    ("hardware", "/ui/hardware"),
    ("plugins", "/ui/plugins"),
    ("playground", "/ui/playground"),
];

#[test]
fn ui_console_in_chromium_for_every_locale() {
    let env = FreshEnv::new();
    let gguf = env.work.path().join("tiny.gguf");
    env.run(&[
        "model",
        "generate-test",
        gguf.to_str().unwrap(),
        "--preset",
        "tiny",
    ])
    .ok();
    // A model no machine of ours holds: a sparse 1 TiB file.
    let huge = env.work.path().join("huge.gguf");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let d = Daemon::start(&env, &[], &[]);
    let stack = env.write(
        "stack.yaml",
        &(model_doc("tiny", gguf.to_str().unwrap())
            + "---\napiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: chat}\nspec:\n  model: tiny\n  engine: {type: llama, contextSize: 256, parallel: 1, threads: 1}\n"),
    );
    env.run(&["apply", "-f", stack.to_str().unwrap()]).ok();
    let (_driver, driver_port) = chromedriver();
    wait_ready(&env, &d, "module", "chat", Duration::from_secs(180));
    wait_until("tiny is routed", Duration::from_secs(20), || {
        env.run(&["run", "tiny", "hi", "--max-tokens", "1"]).code == 0
    });
    let base = format!("http://{}", d.listen);
    let api = Api {
        base: base.clone(),
        token: std::fs::read_to_string(env.home_path().join("run/token"))
            .unwrap()
            .trim()
            .to_string(),
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    let huge_doc = format!(
        "apiVersion: localaistack.io/v1alpha1\nkind: Model\nmetadata: {{name: huge}}\nspec: {{source: {}}}\n---\napiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {{name: huge-chat}}\nspec:\n  model: huge\n  engine: {{type: llama}}\n",
        huge.display()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (lang, tag) in [("en", "en"), ("zh-CN", "zh-Hans"), ("de-DE", "de")] {
            let short = &lang[..2];
            let c = browser(driver_port, lang, true).await;
            login(&c, &env).await;
            let html_lang = c
                .execute("return document.documentElement.lang", vec![])
                .await
                .unwrap();
            assert_eq!(
                html_lang,
                json!(tag),
                "{lang}: the language comes from Accept-Language"
            );

            // Every page, with a screenshot; requests stay on 127.0.0.1.
            for (name, path) in PAGES {
                c.goto(&format!("{base}{path}")).await.unwrap();
                let body = text_of(&c, "body").await;
                assert!(!body.contains('⚠'), "{lang} {path}: a missing key:\n{body}");
                shot(&c, &format!("{short}-{name}")).await;
                for u in requested_urls(&c).await {
                    assert!(
                        u.starts_with(&format!("{base}/")),
                        "{lang} {path}: a request left the daemon: {u}"
                    );
                }
            }

            // A resource applied through the API appears without a reload.
            c.goto(&format!("{base}/ui/resources")).await.unwrap();
            c.execute("window.__noReload = 1; return 1", vec![])
                .await
                .unwrap();
            wait_for("the live stream", Duration::from_secs(10), || async {
                c.execute("return document.documentElement.dataset.liveState", vec![])
                    .await
                    .unwrap()
                    == json!("on")
            })
            .await;
            let name = format!("live-{short}");
            let t0 = Instant::now();
            api.apply(&model_doc(&name, gguf.to_str().unwrap())).await;
            let css = format!("tr[data-object=\"models/{name}\"]");
            wait_for(
                "the applied model in the table",
                Duration::from_secs(10),
                || async { c.find(Locator::Css(&css)).await.is_ok() },
            )
            .await;
            eprintln!(
                "{lang}: store change -> fragment shown in {:?}",
                t0.elapsed()
            );
            assert_eq!(
                c.execute("return window.__noReload", vec![]).await.unwrap(),
                json!(1),
                "{lang}: the page was not reloaded"
            );
            shot(&c, &format!("{short}-resources-live")).await;

            // The rollback button records exactly one new generation.
            let before = generations(&env);
            let target = before[before.len() - 2];
            c.goto(&format!("{base}/ui/history")).await.unwrap();
            click(
                &c,
                &format!("tr[data-generation=\"{target}\"] button.rollback"),
            )
            .await;
            shot(&c, &format!("{short}-rollback-confirm")).await;
            assert_eq!(
                generations(&env),
                before,
                "the confirmation records nothing"
            );
            c.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Id("confirm-rollback"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_for(
                "the history after the rollback",
                Duration::from_secs(10),
                || async {
                    c.current_url()
                        .await
                        .unwrap()
                        .query()
                        .unwrap_or_default()
                        .contains("done=")
                },
            )
            .await;
            let after = generations(&env);
            assert_eq!(
                after.len(),
                before.len() + 1,
                "{lang}: exactly one new generation"
            );
            assert!(!api.exists("models", &name).await, "{lang}: rolled back");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                generations(&env).len(),
                after.len(),
                "and no more after it settles"
            );

            // The plan page refuses a model that does not fit.
            c.goto(&format!("{base}/ui/plan")).await.unwrap();
            c.find(Locator::Id("yaml"))
                .await
                .unwrap()
                .send_keys(&huge_doc)
                .await
                .unwrap();
            c.find(Locator::Id("plan-submit"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let found = c
                .wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::Css("#refusals"))
                .await;
            let refusals = match found {
                Ok(e) => e.text().await.unwrap(),
                Err(_) => panic!("{lang}: no refusals:\n{}", text_of(&c, "main").await),
            };
            assert!(refusals.contains("model/huge"), "{lang}: {refusals}");
            shot(&c, &format!("{short}-plan-refused")).await;
            assert!(
                !api.exists("models", "huge").await,
                "a plan records nothing"
            );

            // The playground gets a reply from the tiny model.
            c.goto(&format!("{base}/ui/playground")).await.unwrap();
            c.find(Locator::Id("send"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let reply = c
                .wait()
                .at_most(Duration::from_secs(120))
                .for_element(Locator::Css("#reply, #reply-error"))
                .await
                .unwrap();
            assert_eq!(
                reply.attr("id").await.unwrap().as_deref(),
                Some("reply"),
                "{lang}: {}",
                reply.text().await.unwrap()
            );
            shot(&c, &format!("{short}-playground-reply")).await;

            let errors = console_errors(&c).await;
            assert!(errors.is_empty(), "{lang}: console errors: {errors:#?}");
            c.close().await.unwrap();
        }

        // Forms work with JavaScript disabled.
        let c = browser(driver_port, "en", false).await;
        login(&c, &env).await;
        c.goto(&format!("{base}/ui/plan")).await.unwrap();
        let doc = model_doc("nojs", gguf.to_str().unwrap());
        c.find(Locator::Id("yaml"))
            .await
            .unwrap()
            .send_keys(&doc)
            .await
            .unwrap();
        c.find(Locator::Id("apply-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // click() returns before the form's navigation ends: wait for the record, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !api.exists("models", "nojs").await {
            assert!(
                std::time::Instant::now() < deadline,
                "applied without JavaScript"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.goto(&format!("{base}/ui/resources?q=nojs&sort=-name"))
            .await
            .unwrap();
        c.find(Locator::Css("tr[data-object=\"models/nojs\"]"))
            .await
            .expect("the filter form's query finds it");
        assert!(
            c.find(Locator::Css("tr[data-object=\"modules/chat\"]"))
                .await
                .is_err()
        );
        let before = generations(&env);
        c.goto(&format!("{base}/ui/history")).await.unwrap();
        click(
            &c,
            &format!(
                "tr[data-generation=\"{}\"] button.rollback",
                before[before.len() - 2]
            ),
        )
        .await;
        shot(&c, "en-nojs-rollback-confirm").await;
        let confirm = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("confirm-rollback"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no confirmation ({e}): see target/ui-screenshots/en-nojs-rollback-confirm.png"
                )
            });
        confirm.click().await.unwrap();
        // click() returns before the form's navigation ends: wait for the generation, then settle.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while generations(&env).len() == before.len() {
            assert!(std::time::Instant::now() < deadline, "no rollback recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(generations(&env).len(), before.len() + 1);
        assert!(!api.exists("models", "nojs").await);
        shot(&c, "en-nojs-history").await;
        c.close().await.unwrap();
    });
}
