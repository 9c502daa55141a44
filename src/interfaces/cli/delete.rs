//! `lasctl delete -f PATH` or `delete KIND NAME...`: record deletions.

use super::apply::print_outcome;
use super::objref;
use super::verbs::{load, lower, open_store};
use super::{CliError, DeleteArgs, FileArgs};
use crate::api::Kind;

pub fn run(d: DeleteArgs) -> Result<(), CliError> {
    let refs: Vec<(Kind, String)> = if !d.paths.is_empty() {
        if !d.args.is_empty() {
            return Err(CliError::Usage(
                "give either -f PATH or KIND NAME..., not both".into(),
            ));
        }
        load(&FileArgs {
            paths: d.paths.clone(),
            recursive: d.recursive,
        })?
        .into_iter()
        .map(|(o, _)| (o.kind(), o.name.to_string()))
        .collect()
    } else {
        objref::many(&d.args)?
    };
    let description = format!(
        "delete {}",
        refs.iter()
            .map(|(k, n)| format!("{}/{n}", lower(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut store = open_store()?;
    let builtins = super::get::built_in_policies(&store, Some(Kind::Policy))?;
    if let Some((_, n)) = refs
        .iter()
        .find(|(k, n)| *k == Kind::Policy && builtins.iter().any(|b| b.name.as_str() == n))
    {
        return Err(CliError::Usage(format!(
            "policy/{n} is built in (policies/default.yaml) and read only: apply a Policy of your own to replace the built-in set"
        )));
    }
    let outcome = store.delete(&refs, &description)?;
    print_outcome(&outcome, false, None)
}
