//! What placeholders stand for, for one request.

use crate::config::Placeholder;

/// Everything a placeholder can stand for, for one request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The host asked for, without its port.
    pub host: &'a str,
    /// The path after the route's rewriting.
    pub path: &'a str,
    pub query: &'a str,
    pub client_ip: &'a str,
    pub request_id: &'a str,
    pub scheme: &'static str,
}

impl<'a> Context<'a> {
    /// What `placeholder` stands for.
    pub fn value(&self, placeholder: Placeholder) -> &'a str {
        match placeholder {
            Placeholder::Host => self.host,
            Placeholder::Path => self.path,
            Placeholder::Query => self.query,
            Placeholder::ClientIp => self.client_ip,
            Placeholder::RequestId => self.request_id,
            Placeholder::Scheme => self.scheme,
        }
    }
}
