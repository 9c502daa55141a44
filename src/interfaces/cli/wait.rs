//! `lasctl wait KIND NAME | KIND/NAME --for=condition=Ready [--timeout=60s]`.
//!
//! Reads the store directly (it works with or without a daemon) and wakes on its writes, by any
//! process ([`super::watch::StoreChanges`]). While the object waits for a download (its own, or
//! a Module's Model) it shows the progress on stderr: a bar on a terminal, else a line per report.

use std::time::{Duration, Instant};

use super::{CliError, WaitArgs};
use crate::api::{ConditionStatus, Kind};
use crate::control::store::{Store, StoreError};
use crate::home::LasHome;

use super::progress::View;
use super::watch::{FALLBACK, StoreChanges};

/// What `--for` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: ConditionStatus,
}

/// `condition=Ready`, `condition=Ready=True`, `condition=Degraded=False`.
pub fn parse_for(s: &str) -> Result<Condition, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--for={s:?} is not understood: use --for=condition=TYPE or --for=condition=TYPE=True|False|Unknown"
        ))
    };
    let rest = s.strip_prefix("condition=").ok_or_else(bad)?;
    let (t, st) = match rest.split_once('=') {
        Some((t, st)) => (t, st),
        None => (rest, "True"),
    };
    if t.is_empty() {
        return Err(bad());
    }
    let status = match st.to_ascii_lowercase().as_str() {
        "true" => ConditionStatus::True,
        "false" => ConditionStatus::False,
        "unknown" => ConditionStatus::Unknown,
        _ => return Err(bad()),
    };
    // Types match case-insensitively, as kubectl's do: `ready` is `Ready`.
    let type_ = ["Ready", "Reconciling", "Stalled", "Degraded"]
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(t))
        .map_or_else(|| t.to_string(), str::to_string);
    Ok(Condition { type_, status })
}

/// `60s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--timeout={s:?} is not a duration like 30s, 2m or 500ms"
        ))
    };
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where the object stands against the condition.
enum Check {
    Met,
    NotYet(String),
}

fn check(store: &Store, kind: Kind, name: &str, want: &Condition) -> Result<Check, CliError> {
    let o = match store.get(kind, name) {
        Ok(o) => o,
        Err(StoreError::NotFound { .. }) => {
            return Ok(Check::NotYet(format!("{kind}/{name} does not exist")));
        }
        Err(e) => return Err(e.into()),
    };
    let observed = o.observed_generation();
    match o.condition(&want.type_) {
        Some((st, reason, message)) if st == want.status && observed == Some(o.generation) => {
            let _ = (reason, message);
            Ok(Check::Met)
        }
        Some((st, reason, message)) => Ok(Check::NotYet(format!(
            "{} is {} ({reason}: {message}), observedGeneration {} of generation {}",
            want.type_,
            st.as_str(),
            observed.map_or("none".into(), |g| g.to_string()),
            o.generation
        ))),
        None => Ok(Check::NotYet(format!(
            "{kind}/{name} has no {} condition yet (observedGeneration {} of generation {})",
            want.type_,
            observed.map_or("none".into(), |g| g.to_string()),
            o.generation
        ))),
    }
}

pub fn run(a: WaitArgs) -> Result<(), CliError> {
    let (kind, name) = super::objref::one(&a.object)?;
    let want = parse_for(&a.for_)?;
    let timeout = parse_duration(&a.timeout)?;
    let home = LasHome::from_env()?;
    home.ensure()?;
    let store = Store::open(&home.state_db())?;
    let deadline = Instant::now() + timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut view = View::new();
    rt.block_on(async {
        let changes = StoreChanges::new(&home);
        loop {
            let why = match check(&store, kind, &name, &want)? {
                Check::Met => {
                    view.finish();
                    println!("{}/{} condition met", kind.as_str().to_lowercase(), name);
                    return Ok(());
                }
                Check::NotYet(why) => why,
            };
            if let Ok(o) = store.get(kind, &name) {
                view.follow(&store, &o);
            }
            let now = Instant::now();
            if now >= deadline {
                view.finish();
                return Err(CliError::Timeout(format!(
                    "timed out after {} waiting for {kind}/{name} {}={}: {why}",
                    a.timeout,
                    want.type_,
                    want.status.as_str()
                )));
            }
            changes.next((deadline - now).min(FALLBACK)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("60s", 60_000),
            ("2m", 120_000),
            ("500ms", 500),
            ("5", 5000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "x", "5y", "-1s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn conditions() {
        assert_eq!(
            parse_for("condition=Ready").unwrap(),
            Condition {
                type_: "Ready".into(),
                status: ConditionStatus::True
            }
        );
        assert_eq!(
            parse_for("condition=Degraded=false").unwrap(),
            Condition {
                type_: "Degraded".into(),
                status: ConditionStatus::False
            }
        );
        for s in ["Ready", "condition=", "condition=Ready=maybe", "delete"] {
            assert!(parse_for(s).is_err(), "{s}");
        }
    }
}
