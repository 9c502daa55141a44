//! The engine driven by the official `openai` Python package: what real clients will do.
//!
//! The interpreter is `$LAS_PYTHON` (set by `make test`), else `.venv/bin/python` of this checkout.
//! Without either, the test fails and says to run `make venv`; it never skips.

mod support_engine;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support_engine::{Engine, generate_model};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LAS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the openai package: set LAS_PYTHON, or run `make venv` to create {}",
        venv.display()
    );
    venv
}

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0, timeout=120)
out = {}

models = client.models.list()
out["models"] = [m.id for m in models.data]

r = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
    temperature=0,
    max_tokens=16,
)
out["chat"] = {
    "id": r.id,
    "object": r.object,
    "model": r.model,
    "role": r.choices[0].message.role,
    "content": r.choices[0].message.content,
    "finish_reason": r.choices[0].finish_reason,
    "usage": r.usage.model_dump(),
}

stream = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
    temperature=0,
    max_tokens=16,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage, objects, roles = [], None, None, set(), []
for chunk in stream:
    objects.add(chunk.object)
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {"content": "".join(parts), "finish_reason": finish, "usage": usage,
                 "objects": sorted(objects), "roles": roles}

c = client.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=8)
out["completion"] = {"object": c.object, "text": c.choices[0].text,
                     "finish_reason": c.choices[0].finish_reason, "usage": c.usage.model_dump()}

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    out["bad"] = None
except Exception as e:
    out["bad"] = {"class": type(e).__name__, "status": getattr(e, "status_code", None),
                  "code": getattr(e, "code", None)}

print(json.dumps(out))
"#;

#[test]
fn official_openai_client_chats_and_streams() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let model = generate_model(dir.path(), "tiny");
    let engine = Engine::start_ready(&model, &["--threads", "1", "--ctx", "256"]);
    let out = Command::new(&python)
        .args(["-c", SCRIPT, &engine.base])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run `make venv` to create the Python environment",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed (is the openai package installed? `make venv`)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("script prints JSON");

    assert_eq!(v["models"], serde_json::json!(["tiny"]));

    let chat = &v["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "tiny");
    assert_eq!(chat["role"], "assistant");
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let fr = chat["finish_reason"].as_str().unwrap();
    assert!(fr == "stop" || fr == "length", "{chat}");
    let u = &chat["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let stream = &v["stream"];
    assert_eq!(
        stream["objects"],
        serde_json::json!(["chat.completion.chunk"])
    );
    assert_eq!(stream["roles"], serde_json::json!(["assistant"]));
    // Greedy: the streamed answer is the same as the whole one.
    assert_eq!(stream["content"], chat["content"]);
    assert_eq!(stream["finish_reason"], chat["finish_reason"]);
    assert_eq!(stream["usage"], chat["usage"]);

    let c = &v["completion"];
    assert_eq!(c["object"], "text_completion");
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    let bad = &v["bad"];
    assert_eq!(bad["class"], "BadRequestError", "{bad}");
    assert_eq!(bad["status"], 400);
    assert_eq!(bad["code"], "model_not_found");
}
