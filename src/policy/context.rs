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
            Placeholder::ClientIp => push_address(out, self.client_ip),
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

/// Appends `ip` as text: IPv4 digit by digit (the formatting machinery costs more than the address), IPv6
/// by its `Display`.
fn push_address(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
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

    #[test]
    fn addresses_and_numbers_as_text() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.20.0.7",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::from([1, 1, 1, 1]));
            let mut out = String::new();
            push_address(&mut out, parsed);
            assert_eq!(out, parsed.to_string());
        }
        for n in [0, 7, 10, 99, 100, 65_536, u64::MAX] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
