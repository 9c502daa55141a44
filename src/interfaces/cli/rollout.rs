//! `lasctl rollout status KIND NAME | KIND/NAME [--timeout D]`: waits until the object's current
//! generation is observed and Ready, printing each step on the way, as `kubectl rollout status`
//! does.
//!
//! Steps are the object's new events (Replacing, Started, Ready, Replaced, Restarted, ...) and
//! every change of what its conditions say (Reconciling, Ready, waiting for health), one line
//! each; a download the object waits for (its own, or a Module's `spec.model`) is a progress bar
//! on a terminal and a line per report otherwise. It reads the store (it works without a daemon)
//! and wakes on its writes ([`super::watch::StoreChanges`]).
//!
//! Exit 0 once rolled out; 1 when the object is Stalled at its generation, deleted, or the
//! timeout passes, with the reason.

use std::io::Write;
use std::time::{Duration, Instant};

use super::progress::View;
use super::watch::{FALLBACK, StoreChanges};
use super::{CliError, objref};
use crate::api::{ConditionStatus, Kind};
use crate::control::store::{Store, StoreError, StoredObject};
use crate::home::LasHome;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Wait until a Module (or Model) is Ready at its current generation, printing each step.
    Status {
        /// KIND NAME or KIND/NAME, e.g. module/chat.
        #[arg(required = true, num_args = 1..=2, value_name = "KIND NAME | KIND/NAME")]
        object: Vec<String>,
        /// Give up after this long (e.g. 90s, 5m); 0 waits for ever.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
}

pub fn run(cmd: RolloutCommand) -> Result<(), CliError> {
    let RolloutCommand::Status { object, timeout } = cmd;
    let (kind, name) = objref::one(&object)?;
    if kind == Kind::Policy {
        return Err(CliError::Usage(
            "rollout status follows a Module or a Model; a Policy has nothing to roll out".into(),
        ));
    }
    let limit = super::wait::parse_duration(&timeout)?;
    let deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
    let home = LasHome::from_env()?;
    home.ensure()?;
    let store = Store::open(&home.state_db())?;
    let id = format!("{}/{name}", kind.as_str().to_lowercase());
    let start = match store.get(kind, &name) {
        Ok(o) => o,
        Err(StoreError::NotFound { .. }) => {
            return Err(CliError::Failed(format!("{id} does not exist")));
        }
        Err(e) => return Err(e.into()),
    };
    // The steps of this rollout: the events since the generation that last changed the object
    // (those of earlier rollouts are in `lasctl describe` and `lasctl events`).
    let since = crate::control::history::object_history(&store, kind, &name)?
        .last()
        .map(|r| r.time.clone())
        .unwrap_or_default();
    let mut after = store
        .events(Some((kind.as_str(), &name)), 0, 10_000)?
        .iter()
        .filter(|e| e.time < since)
        .map(|e| e.id)
        .max()
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut view = View::new();
    rt.block_on(async {
        let changes = StoreChanges::new(&home);
        loop {
            let o = match store.get(kind, &name) {
                Ok(o) if o.uid == start.uid && o.deleted_at.is_none() => o,
                Ok(_) | Err(StoreError::NotFound { .. }) => {
                    view.finish();
                    return Err(CliError::Failed(format!(
                        "{id} was deleted while its rollout was followed"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            for e in store.events(Some((kind.as_str(), &name)), after, 100)? {
                after = after.max(e.id);
                view.line(&format!("{id}: {}: {}", e.reason, e.message));
            }
            let current = o.observed_generation() == Some(o.generation);
            if current && matches!(o.condition("Ready"), Some((ConditionStatus::True, _, _))) {
                view.finish();
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{id} successfully rolled out (generation {})",
                    o.generation
                )?;
                return Ok(());
            }
            if current
                && let Some((ConditionStatus::True, reason, message)) = o.condition("Stalled")
            {
                view.finish();
                return Err(CliError::Failed(format!(
                    "{id} rollout of generation {} stalled: {reason}: {message}",
                    o.generation
                )));
            }
            let waiting = waiting_line(&o);
            view.state(&format!("Waiting for {id} rollout to finish: {waiting}"));
            view.follow(&store, &o);
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        view.finish();
                        return Err(CliError::Timeout(format!(
                            "timed out after {timeout} waiting for {id} rollout: {waiting}"
                        )));
                    }
                    d - now
                }
                None => Duration::MAX,
            };
            changes.next(left.min(FALLBACK)).await;
        }
    })
}

/// What the object is waiting for, from its conditions.
fn waiting_line(o: &StoredObject) -> String {
    if o.observed_generation() != Some(o.generation) {
        return format!(
            "generation {} not yet observed (observed: {})",
            o.generation,
            o.observed_generation()
                .map_or("none".into(), |g| g.to_string())
        );
    }
    let reconciling = o
        .condition("Reconciling")
        .filter(|(s, _, _)| *s == ConditionStatus::True);
    match reconciling.or_else(|| o.condition("Ready")) {
        Some((_, reason, message)) if message.is_empty() => reason,
        Some((_, reason, message)) => format!("{reason}: {message}"),
        None => "not reconciled yet".into(),
    }
}
