//! The console's words: Fluent message files with semantic keys (`locales/{en,zh,de}/console.ftl`,
//! compiled into the binary), the language a request gets, and the lookups templates call.
//!
//! # Guarantees
//! - The language is `?lang=`, else the `las_lang` cookie, else the best `Accept-Language` entry we
//!   ship, else English.
//! - A key missing in a locale falls back to English; a key missing in English renders as a
//!   visible marker (`⚠key⚠`) — and a test fails on it.
//! - Condition reasons and error codes we know map to `reason-*` keys; free text from the system
//!   (messages, names) is shown as it is.
//! - `pseudo` (`?lang=pseudo`) wraps every message in `⟦…⟧`: text outside the markers is either
//!   data or hard-coded (the tests look for the latter).

use std::sync::OnceLock;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};

/// The cookie that keeps a choice made with `?lang=`.
pub const LANG_COOKIE: &str = "las_lang";

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
    De,
    /// English wrapped in markers, for finding hard-coded text.
    Pseudo,
}

/// The languages shipped, in the order the switcher shows them.
pub const SHIPPED: [Lang; 3] = [Lang::En, Lang::Zh, Lang::De];

/// The message files, compiled in.
pub const SOURCES: [(Lang, &str); 3] = [
    (Lang::En, include_str!("../../../../locales/en/console.ftl")),
    (Lang::Zh, include_str!("../../../../locales/zh/console.ftl")),
    (Lang::De, include_str!("../../../../locales/de/console.ftl")),
];

/// Condition reasons and error codes that have a `reason-*` key (the key is `reason-` and the
/// reason in lower case). Others are shown as they are.
pub const KNOWN_REASONS: &[&str] = &[
    "Ready",
    "NotReady",
    "Reconciling",
    "Stalled",
    "Unknown",
    "Progressing",
    "Downloading",
    "Starting",
    "Running",
    "Failed",
    "Refused",
    "Deleting",
    "Applied",
    "Suspended",
    "Resumed",
    "Created",
    "Configured",
    "Pruned",
    "Deleted",
];

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
            Lang::De => "de",
            Lang::Pseudo => "pseudo",
        }
    }

    /// The BCP 47 tag for `<html lang>`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En | Lang::Pseudo => "en",
            Lang::Zh => "zh-Hans",
            Lang::De => "de",
        }
    }

    /// A language's own name (the switcher shows each in its own script).
    pub fn endonym(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Zh => "简体中文",
            Lang::De => "Deutsch",
            Lang::Pseudo => "Pseudo",
        }
    }

    /// `en`, `zh`, `zh-CN`, `zh-Hans`, `de-AT`, `pseudo` (case-insensitive); `None` otherwise.
    pub fn parse(s: &str) -> Option<Lang> {
        let s = s.trim().to_ascii_lowercase();
        if s == "pseudo" {
            return Some(Lang::Pseudo);
        }
        let primary = s.split(['-', '_']).next().unwrap_or("");
        match primary {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            "de" => Some(Lang::De),
            _ => None,
        }
    }
}

/// The best shipped language of an `Accept-Language` value (q-values honoured, ties in order).
pub fn from_accept_language(v: &str) -> Option<Lang> {
    let mut best: Option<(f32, usize, Lang)> = None;
    for (i, part) in v.split(',').enumerate() {
        let mut it = part.split(';');
        let tag = it.next().unwrap_or("").trim();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        let Some(lang) = Lang::parse(tag).filter(|l| *l != Lang::Pseudo) else {
            continue;
        };
        if q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, bi, _)| q > bq || (q == bq && i < bi)) {
            best = Some((q, i, lang));
        }
    }
    best.map(|(_, _, l)| l)
}

/// `?lang=`, then the cookie, then `Accept-Language`, then English.
pub fn negotiate(query: Option<&str>, cookie: Option<&str>, accept: Option<&str>) -> Lang {
    query
        .and_then(Lang::parse)
        .or_else(|| cookie.and_then(Lang::parse))
        .or_else(|| accept.and_then(from_accept_language))
        .unwrap_or(Lang::En)
}

type Bundle = FluentBundle<FluentResource>;

fn bundles() -> &'static [(Lang, Bundle)] {
    static B: OnceLock<Vec<(Lang, Bundle)>> = OnceLock::new();
    B.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(lang, text)| {
                let res = match FluentResource::try_new(text.to_string()) {
                    Ok(r) => r,
                    // A test parses every file strictly; at run time the good entries still serve.
                    Err((r, _)) => r,
                };
                let id: unic_langid::LanguageIdentifier = lang.tag().parse().unwrap_or_default();
                let mut b = FluentBundle::new_concurrent(vec![id]);
                b.set_use_isolating(false);
                let _ = b.add_resource(res);
                (*lang, b)
            })
            .collect()
    })
}

fn bundle(lang: Lang) -> Option<&'static Bundle> {
    bundles().iter().find(|(l, _)| *l == lang).map(|(_, b)| b)
}

fn format(b: &Bundle, key: &str, args: Option<&FluentArgs>) -> Option<String> {
    let msg = b.get_message(key)?;
    let pattern = msg.value()?;
    let mut errors = Vec::new();
    Some(b.format_pattern(pattern, args, &mut errors).into_owned())
}

/// The message `key` in `lang` (English when that locale lacks it; a visible marker when English
/// does too).
pub fn message(lang: Lang, key: &str, args: Option<&FluentArgs>) -> String {
    let own = match lang {
        Lang::Pseudo => None,
        l => bundle(l).and_then(|b| format(b, key, args)),
    };
    let text = own.or_else(|| bundle(Lang::En).and_then(|b| format(b, key, args)));
    match (text, lang) {
        (Some(t), Lang::Pseudo) => format!("⟦{t}⟧"),
        (Some(t), _) => t,
        (None, _) => format!("⚠{key}⚠"),
    }
}

/// What templates call: `{{ tr.t("nav-overview") }}`.
#[derive(Debug, Clone, Copy)]
pub struct Tr {
    pub lang: Lang,
}

impl Tr {
    pub fn t(&self, key: &str) -> String {
        message(self.lang, key, None)
    }

    /// A message with one number `$count` (plural rules of the locale: CLDR).
    pub fn n(&self, key: &str, count: impl std::borrow::Borrow<u64>) -> String {
        let mut a = FluentArgs::new();
        a.set("count", FluentValue::from(*count.borrow()));
        message(self.lang, key, Some(&a))
    }

    /// A message with one text argument `$value`.
    pub fn v(&self, key: &str, value: &str) -> String {
        let mut a = FluentArgs::new();
        a.set("value", FluentValue::from(value.to_string()));
        message(self.lang, key, Some(&a))
    }

    /// A condition reason or error code: its key when we know it, else the text as it is.
    pub fn reason(&self, reason: &str) -> String {
        if KNOWN_REASONS.contains(&reason) {
            self.t(&format!("reason-{}", reason.to_ascii_lowercase()))
        } else {
            reason.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Keys built at run time from a value: (prefix, the values there are). `status-` from a
    /// condition's status, `action-` from a plan action, `change-` from an apply's outcome,
    /// `revision-` from an object's history.
    const DYNAMIC_KEYS: &[(&str, &[&str])] = &[
        ("status-", &["true", "false", "unknown"]),
        (
            "action-",
            &[
                "downloadmodel",
                "pullimage",
                "createcontainer",
                "startprocess",
                "stop",
                "remove",
            ],
        ),
        (
            "change-",
            &["created", "configured", "unchanged", "pruned", "deleted"],
        ),
        ("revision-", &["created", "changed", "deleted", "present"]),
    ];

    fn keys(text: &str) -> BTreeSet<String> {
        assert!(
            FluentResource::try_new(text.to_string()).is_ok(),
            "every message file parses without errors"
        );
        text.lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter_map(|l| l.split_once(" ="))
            .map(|(k, _)| k.trim().to_string())
            .collect()
    }

    fn is_key(k: &str) -> bool {
        !k.is_empty()
            && k.starts_with(|c: char| c.is_ascii_lowercase())
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
    }

    /// The console's templates and code (this file aside).
    fn sources() -> Vec<String> {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut texts = Vec::new();
        for dir in ["templates/ui", "src/interfaces/http/ui"] {
            for e in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
                let p = e.unwrap().path();
                if p.file_name().is_some_and(|n| n != "i18n.rs") {
                    texts.push(std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        texts
    }

    /// Keys certainly looked up: `.t("k")`, `.n("k", …)`, `.v("k", …)`, the dynamic keys and
    /// the `reason-*` keys of [`KNOWN_REASONS`].
    fn looked_up() -> BTreeSet<String> {
        let mut out: BTreeSet<String> = KNOWN_REASONS
            .iter()
            .map(|r| format!("reason-{}", r.to_ascii_lowercase()))
            .collect();
        for (prefix, values) in DYNAMIC_KEYS {
            out.extend(values.iter().map(|v| format!("{prefix}{v}")));
        }
        for text in sources() {
            for call in [".t(\"", ".n(\"", ".v(\""] {
                for (i, _) in text.match_indices(call) {
                    let rest = &text[i + call.len()..];
                    if let Some(end) = rest.find('"')
                        && is_key(&rest[..end])
                    {
                        out.insert(rest[..end].to_string());
                    }
                }
            }
        }
        out
    }

    /// Keys that may be looked up: [`looked_up`] and every key of `en` that the console's code
    /// names as a string literal (keys handed to a function that looks them up, e.g. a page's
    /// title key).
    fn maybe_used(en: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out = looked_up();
        let texts = sources();
        for k in en {
            let quoted = format!("\"{k}\"");
            if texts.iter().any(|t| t.contains(&quoted)) {
                out.insert(k.clone());
            }
        }
        out
    }

    #[test]
    fn every_locale_has_every_key_and_no_unused_one() {
        let en = keys(SOURCES[0].1);
        let missing_en: Vec<_> = looked_up()
            .into_iter()
            .filter(|k| !en.contains(k))
            .collect();
        assert!(
            missing_en.is_empty(),
            "keys looked up but missing in en: {missing_en:?}"
        );
        let used = maybe_used(&en);
        let unused: Vec<_> = en.difference(&used).collect();
        assert!(
            unused.is_empty(),
            "keys in en that nothing uses: {unused:?}"
        );
        for (lang, text) in &SOURCES[1..] {
            let k = keys(text);
            let missing: Vec<_> = en.difference(&k).collect();
            let extra: Vec<_> = k.difference(&en).collect();
            assert!(missing.is_empty(), "{lang:?} lacks {missing:?}");
            assert!(extra.is_empty(), "{lang:?} has unused {extra:?}");
        }
    }

    #[test]
    fn language_comes_from_query_then_cookie_then_accept_language() {
        assert_eq!(negotiate(Some("de"), Some("zh"), Some("en")), Lang::De);
        assert_eq!(negotiate(Some("xx"), Some("zh"), Some("de")), Lang::Zh);
        assert_eq!(
            negotiate(None, None, Some("fr, de;q=0.8, zh;q=0.9")),
            Lang::Zh
        );
        assert_eq!(negotiate(None, None, Some("zh-CN,zh;q=0.9")), Lang::Zh);
        assert_eq!(negotiate(None, None, Some("fr, ja")), Lang::En);
        assert_eq!(negotiate(None, None, None), Lang::En);
    }

    #[test]
    fn missing_keys_fall_back_to_english_or_show_a_marker() {
        let tr = Tr { lang: Lang::De };
        assert_eq!(tr.t("no-such-key-anywhere"), "⚠no-such-key-anywhere⚠");
        assert_ne!(
            tr.t("nav-overview"),
            Tr { lang: Lang::En }.t("nav-overview")
        );
        assert!(Tr { lang: Lang::Pseudo }.t("nav-overview").starts_with('⟦'));
        // Plurals follow the locale's rules.
        let en = Tr { lang: Lang::En };
        assert_ne!(en.n("count-objects", 1), en.n("count-objects", 2));
        // Known reasons translate; free text stays.
        let zh = Tr { lang: Lang::Zh };
        assert_ne!(zh.reason("Stalled"), "Stalled");
        assert_eq!(zh.reason("ImagePullBackOff: x"), "ImagePullBackOff: x");
    }
}
