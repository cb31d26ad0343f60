//! Header rules (`request_headers`, `response_headers`): fields removed, then set (replacing), then added,
//! their values rendered from placeholders. A value that renders to something a header cannot hold (a
//! placeholder's text never can; the literal parts were checked at load) is skipped.

use http::header::{HeaderMap, HeaderValue};

use super::context::Context;
use crate::config::HeaderRules;

/// Applies `rules` to `headers`.
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap, context: &Context<'_>) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, template) in &rules.set {
        if let Some(value) = render(template, context) {
            headers.insert(name.clone(), value);
        }
    }
    for (name, template) in &rules.add {
        if let Some(value) = render(template, context) {
            headers.append(name.clone(), value);
        }
    }
}

fn render(template: &crate::config::Template, context: &Context<'_>) -> Option<HeaderValue> {
    HeaderValue::from_str(&template.render(|p| context.value(p))).ok()
}
