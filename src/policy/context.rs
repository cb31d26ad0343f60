//! What placeholders stand for, for one request: borrowed from the request as it is, and formatted only
//! when a template asks (the client's address, the host without its port).

use std::fmt::Write as _;
use std::net::IpAddr;

use http::Uri;

use crate::config::{Placeholder, Template};

/// Everything a placeholder can stand for, for one request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The host asked for, as the client wrote it (a port included); `{host}` is without the port.
    pub host: &'a str,
    /// The request target after the route's rewriting: `{path}` and `{query}`.
    pub uri: &'a Uri,
    pub client_ip: IpAddr,
    pub request_id: &'a str,
    pub scheme: &'static str,
}

impl Context<'_> {
    /// Appends what `placeholder` stands for to `out`.
    pub fn write(&self, placeholder: Placeholder, out: &mut String) {
        match placeholder {
            Placeholder::Host => out.push_str(without_port(self.host)),
            Placeholder::Path => out.push_str(self.uri.path()),
            Placeholder::Query => out.push_str(self.uri.query().unwrap_or_default()),
            Placeholder::ClientIp => {
                let _ = write!(out, "{}", self.client_ip);
            }
            Placeholder::RequestId => out.push_str(self.request_id),
            Placeholder::Scheme => out.push_str(self.scheme),
        }
    }

    /// `template` rendered for this request.
    pub fn render(&self, template: &Template) -> String {
        let mut out = String::new();
        template.render_into(&mut out, |placeholder, out| self.write(placeholder, out));
        out
    }
}

/// A host field's host: `example.test:8443` -> `example.test`, `[::1]:443` -> `[::1]`.
fn without_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_come_from_the_request() {
        let uri: Uri = "/a/b?x=1".parse().unwrap_or_default();
        let template = Template::parse("{scheme}://{host}{path}?{query} {client_ip} {request_id}")
            .unwrap_or_else(|e| panic!("{e}"));
        let context = |host| Context {
            host,
            uri: &uri,
            client_ip: IpAddr::from([192, 0, 2, 7]),
            request_id: "r1",
            scheme: "https",
        };
        assert_eq!(
            context("example.test:8443").render(&template),
            "https://example.test/a/b?x=1 192.0.2.7 r1"
        );
        assert_eq!(
            context("[::1]:443").render(&template),
            "https://[::1]/a/b?x=1 192.0.2.7 r1"
        );
        assert_eq!(context("[::1]").render(&template), "https://[::1]/a/b?x=1 192.0.2.7 r1");
        assert_eq!(context("").render(&template), "https:///a/b?x=1 192.0.2.7 r1");
    }
}
