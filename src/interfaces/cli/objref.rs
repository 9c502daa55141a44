//! Objects named on the command line, as kubectl takes them: `KIND NAME` or `KIND/NAME`, the kind
//! singular, plural or short (`mo`, `mod`, `pol`), in any case. Every verb that names an object
//! parses its arguments here, so they all accept the same forms.

use super::CliError;
use crate::api::Kind;

pub fn parse_kind(s: &str) -> Result<Kind, CliError> {
    Kind::parse_loose(s).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown kind {s:?}: known kinds are {} (singular, plural, short: {})",
            Kind::known_list(),
            Kind::ALL
                .iter()
                .flat_map(|k| k.short_names())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Exactly one object: `KIND NAME` or `KIND/NAME`.
pub fn one(args: &[String]) -> Result<(Kind, String), CliError> {
    optional(args)?.ok_or_else(|| CliError::Usage("name an object: KIND NAME or KIND/NAME".into()))
}

/// No object, or one: `KIND NAME` or `KIND/NAME`.
pub fn optional(args: &[String]) -> Result<Option<(Kind, String)>, CliError> {
    match args {
        [] => Ok(None),
        [one] => match one.split_once('/') {
            Some((k, n)) if !n.is_empty() => Ok(Some((parse_kind(k)?, n.to_string()))),
            _ => Err(CliError::Usage(format!(
                "{one:?} names no object: give KIND NAME or KIND/NAME, e.g. module chat or module/chat"
            ))),
        },
        [k, n] if !k.contains('/') && !n.contains('/') => Ok(Some((parse_kind(k)?, n.clone()))),
        _ => Err(CliError::Usage(format!(
            "{:?}: give one object, as KIND NAME or KIND/NAME",
            args.join(" ")
        ))),
    }
}

/// Several objects: `KIND NAME...` or `KIND/NAME...` (kinds may differ in the second form).
pub fn many(args: &[String]) -> Result<Vec<(Kind, String)>, CliError> {
    let Some(first) = args.first() else {
        return Err(CliError::Usage(
            "name objects: KIND NAME... or KIND/NAME...".into(),
        ));
    };
    if first.contains('/') {
        return args
            .iter()
            .map(|a| {
                optional(std::slice::from_ref(a)).map(|o| o.expect("one argument names an object"))
            })
            .collect();
    }
    let kind = parse_kind(first)?;
    let names = &args[1..];
    if names.is_empty() {
        return Err(CliError::Usage(format!(
            "{first} needs at least one NAME (or write KIND/NAME)"
        )));
    }
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        return Err(CliError::Usage(format!(
            "{bad:?}: after a KIND give plain names, or write every object as KIND/NAME"
        )));
    }
    Ok(names.iter().map(|n| (kind, n.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn both_forms_and_short_names_name_the_same_object() {
        for args in [
            s(&["module", "chat"]),
            s(&["module/chat"]),
            s(&["mod", "chat"]),
            s(&["Modules/chat"]),
        ] {
            assert_eq!(
                one(&args).unwrap(),
                (Kind::Module, "chat".into()),
                "{args:?}"
            );
        }
        assert_eq!(one(&s(&["mo/tiny"])).unwrap(), (Kind::Model, "tiny".into()));
        assert_eq!(one(&s(&["pol", "default"])).unwrap().0, Kind::Policy);
    }

    #[test]
    fn malformed_object_arguments_are_usage_errors() {
        for args in [
            s(&[]),
            s(&["module"]),
            s(&["module/"]),
            s(&["a", "b", "c"]),
            s(&["x/y"]),
        ] {
            assert!(one(&args).is_err(), "{args:?}");
        }
        assert_eq!(optional(&[]).unwrap(), None);
    }

    #[test]
    fn many_takes_one_kind_and_names_or_several_refs() {
        assert_eq!(
            many(&s(&["mod", "a", "b"])).unwrap(),
            vec![(Kind::Module, "a".into()), (Kind::Module, "b".into())]
        );
        assert_eq!(
            many(&s(&["module/a", "model/b"])).unwrap(),
            vec![(Kind::Module, "a".into()), (Kind::Model, "b".into())]
        );
        assert!(many(&s(&["module"])).is_err());
        assert!(many(&s(&["module", "a/b"])).is_err());
    }
}
