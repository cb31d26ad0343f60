//! Header rules (`request_headers`, `response_headers`): fields removed, then set (replacing), then added.
//! A value without placeholders is made into a header value once, when the snapshot is built; one with
//! placeholders is rendered for each request, and skipped if it renders to something a header cannot hold
//! (a placeholder's text never can; the literal parts were checked at load).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::context::Context;
use crate::config::{HeaderRules, Template};

/// A header rule's value.
#[derive(Debug)]
enum Value {
    Fixed(HeaderValue),
    Rendered(Template),
}

/// One list of header rules, prepared.
#[derive(Debug, Default)]
pub struct Rules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Value)>,
    add: Vec<(HeaderName, Value)>,
}

impl Rules {
    pub fn new(rules: &HeaderRules) -> Self {
        let prepare = |list: &[(HeaderName, Template)]| {
            list.iter()
                .map(|(name, template)| {
                    let fixed = template.literal().and_then(|text| HeaderValue::try_from(text).ok());
                    let value = fixed.map_or_else(|| Value::Rendered(template.clone()), Value::Fixed);
                    (name.clone(), value)
                })
                .collect()
        };
        Self {
            remove: rules.remove.clone(),
            set: prepare(&rules.set),
            add: prepare(&rules.add),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// True when some value is rendered per request, so it needs a [`Context`].
    pub fn renders(&self) -> bool {
        self.set
            .iter()
            .chain(&self.add)
            .any(|(_, value)| matches!(value, Value::Rendered(_)))
    }

    /// Applies the rules to `headers`; values with placeholders need `context` (without it they are
    /// skipped, which the caller avoids by asking [`Rules::renders`]).
    pub fn apply(&self, headers: &mut HeaderMap, context: Option<&Context<'_>>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            if let Some(value) = resolve(value, context) {
                headers.insert(name.clone(), value);
            }
        }
        for (name, value) in &self.add {
            if let Some(value) = resolve(value, context) {
                headers.append(name.clone(), value);
            }
        }
    }
}

fn resolve(value: &Value, context: Option<&Context<'_>>) -> Option<HeaderValue> {
    match value {
        Value::Fixed(value) => Some(value.clone()),
        Value::Rendered(template) => HeaderValue::try_from(context?.render(template)).ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use http::Uri;

    use super::*;

    fn template(text: &str) -> Template {
        Template::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn removed_then_set_then_added_with_placeholders_rendered() {
        let rules = Rules::new(&HeaderRules {
            set: vec![
                (HeaderName::from_static("x-env"), template("prod")),
                (HeaderName::from_static("x-seen"), template("{client_ip} {path}")),
            ],
            add: vec![(HeaderName::from_static("x-env"), template("also"))],
            remove: vec![HeaderName::from_static("x-debug"), HeaderName::from_static("x-env")],
        });
        assert!(rules.renders());
        let uri: Uri = "/a?b=1".parse().unwrap_or_default();
        let context = Context {
            host: "example.test",
            uri: &uri,
            client_ip: IpAddr::from([192, 0, 2, 7]),
            request_id: "r1",
            scheme: "https",
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-env", HeaderValue::from_static("old"));
        rules.apply(&mut headers, Some(&context));
        assert_eq!(headers.get("x-debug"), None);
        let env: Vec<_> = headers.get_all("x-env").iter().collect();
        assert_eq!(env, ["prod", "also"]);
        assert_eq!(
            headers.get("x-seen").map(HeaderValue::as_bytes),
            Some(&b"192.0.2.7 /a"[..])
        );

        // Without a context only the fixed values apply.
        let mut headers = HeaderMap::new();
        rules.apply(&mut headers, None);
        assert_eq!(headers.get("x-seen"), None);
        assert_eq!(headers.get_all("x-env").iter().count(), 2);
    }

    #[test]
    fn fixed_values_need_no_context() {
        let rules = Rules::new(&HeaderRules {
            set: vec![(
                HeaderName::from_static("strict-transport-security"),
                template("max-age=1"),
            )],
            ..Default::default()
        });
        assert!(!rules.renders());
        assert!(!rules.is_empty());
        assert!(Rules::new(&HeaderRules::default()).is_empty());
    }
}
