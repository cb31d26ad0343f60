//! Values with placeholders, parsed when the configuration is loaded: `{host}`, `{path}`, `{query}`,
//! `{client_ip}`, `{request_id}` and `{scheme}` in redirect targets, direct answers' bodies and header
//! values. `{{` and `}}` are literal braces. An unknown placeholder is a configuration error, never a
//! surprise at request time.

use std::fmt;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The host the client asked for, without the port.
    Host,
    /// The request path (after the route's rewriting), without the query.
    Path,
    /// The query, without `?`; empty when there is none.
    Query,
    /// The client's address (behind trusted proxies, the one they reported).
    ClientIp,
    /// The request's ID (`server.request_id_header`).
    RequestId,
    /// `http` or `https`.
    Scheme,
}

impl Placeholder {
    const ALL: [(&'static str, Self); 6] = [
        ("host", Self::Host),
        ("path", Self::Path),
        ("query", Self::Query),
        ("client_ip", Self::ClientIp),
        ("request_id", Self::RequestId),
        ("scheme", Self::Scheme),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Placeholder),
}

/// A parsed value with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; an error names the unknown placeholder or the unclosed brace.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err("a lone `}`: write `}}` for a literal brace".to_owned());
            }
            let Some(end) = tail.find('}') else {
                return Err("a `{` that is never closed: write `{{` for a literal brace".to_owned());
            };
            let name = &tail[1..end];
            let Some((_, placeholder)) = Placeholder::ALL.iter().find(|(known, _)| *known == name) else {
                let known: Vec<String> = Placeholder::ALL.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                return Err(format!("unknown placeholder `{{{name}}}`; known: {}", known.join(", ")));
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(*placeholder));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The value when it has no placeholder, so that it can be prepared once.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(text)] => Some(text.clone()),
            _ => None,
        }
    }

    /// True when some part is a placeholder, so the value differs from request to request.
    pub fn has_placeholders(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::Field(_)))
    }

    /// The value with each placeholder replaced by what `value` gives for it.
    pub fn render<'v>(&self, value: impl Fn(Placeholder) -> &'v str) -> String {
        let mut out = String::new();
        self.render_into(&mut out, |placeholder, out| out.push_str(value(placeholder)));
        out
    }

    /// Appends the value to `out`, each placeholder written by `write`, so that a value made at request
    /// time (an address) is formatted straight into the result.
    pub fn render_into(&self, out: &mut String, write: impl Fn(Placeholder, &mut String)) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(placeholder) => write(*placeholder, out),
            }
        }
    }

    /// Every literal part, for checks that only the configuration's own text can fail.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Text(text) => Some(text.as_str()),
            Part::Field(_) => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Part::Field(placeholder) => {
                    let name = Placeholder::ALL
                        .iter()
                        .find(|(_, p)| p == placeholder)
                        .map_or("?", |(n, _)| n);
                    write!(f, "{{{name}}}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> Result<String, String> {
        let template = Template::parse(text)?;
        Ok(template.render(|p| match p {
            Placeholder::Host => "example.test",
            Placeholder::Path => "/a/b",
            Placeholder::Query => "x=1",
            Placeholder::ClientIp => "192.0.2.7",
            Placeholder::RequestId => "r1",
            Placeholder::Scheme => "https",
        }))
    }

    #[test]
    fn placeholders_are_replaced_and_braces_escape() {
        assert_eq!(
            render("{scheme}://{host}/new{path}?{query}").as_deref(),
            Ok("https://example.test/new/a/b?x=1")
        );
        assert_eq!(
            render("from {client_ip} ({request_id})").as_deref(),
            Ok("from 192.0.2.7 (r1)")
        );
        assert_eq!(render("{{literal}} }}").as_deref(), Ok("{literal} }"));
        assert_eq!(render("plain").as_deref(), Ok("plain"));
        assert_eq!(
            Template::parse("plain").map(|t| t.literal()),
            Ok(Some("plain".to_owned()))
        );
        assert_eq!(Template::parse("{path}").map(|t| t.literal()), Ok(None));
        assert_eq!(
            Template::parse("a{path}{{b").map(|t| t.to_string()),
            Ok("a{path}{{b".to_owned())
        );
    }

    #[test]
    fn unknown_placeholders_and_stray_braces_are_errors() {
        assert!(render("{uri}").is_err_and(|e| e.contains("unknown placeholder `{uri}`")));
        assert!(render("{path").is_err_and(|e| e.contains("never closed")));
        assert!(render("a}b").is_err_and(|e| e.contains("lone")));
    }
}
