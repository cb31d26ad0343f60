//! Path rewriting before a request goes on: a prefix stripped (`/static/a.css` -> `/a.css`, and the prefix
//! itself -> `/`), or a regular expression's replacement. The query is kept as it was.

use http::uri::{PathAndQuery, Uri};

use crate::config::Rewrite;

/// The path `rewrite` makes of `path`; `None` when it does not apply.
pub fn path(rewrite: &Rewrite, path: &str) -> Option<String> {
    match rewrite {
        Rewrite::StripPrefix(prefix) => {
            let rest = path.strip_prefix(prefix.as_str())?;
            if rest.is_empty() {
                Some("/".to_owned())
            } else if rest.starts_with('/') {
                Some(rest.to_owned())
            } else {
                // `/staticfiles` does not start with the prefix `/static`: segments are whole.
                None
            }
        }
        Rewrite::Regex { regex, replacement } => regex
            .is_match(path)
            .then(|| regex.replace(path, replacement.as_str()).into_owned()),
    }
}

/// `uri` with its path replaced by `path`, keeping the query; `None` if the result is no valid target.
pub fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_segments_whole() {
        let strip = Rewrite::StripPrefix("/static".to_owned());
        assert_eq!(path(&strip, "/static/a.css").as_deref(), Some("/a.css"));
        assert_eq!(path(&strip, "/static").as_deref(), Some("/"));
        assert_eq!(path(&strip, "/staticfiles/a").as_deref(), None);
        assert_eq!(path(&strip, "/other").as_deref(), None);
    }

    #[test]
    fn regex_rewrites_with_groups_and_the_query_stays() {
        let rewrite = Rewrite::Regex {
            regex: regex::Regex::new("^/v1/(?P<rest>.*)$").unwrap_or_else(|_| unreachable!()),
            replacement: "/api/v1/${rest}".to_owned(),
        };
        assert_eq!(path(&rewrite, "/v1/users/7").as_deref(), Some("/api/v1/users/7"));
        assert_eq!(path(&rewrite, "/v2/users").as_deref(), None);
        let uri: Uri = "/v1/users?page=2".parse().unwrap_or_default();
        assert_eq!(
            with_path(&uri, "/api/v1/users").map(|u| u.to_string()).as_deref(),
            Some("/api/v1/users?page=2")
        );
    }
}
