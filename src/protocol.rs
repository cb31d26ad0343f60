//! The protocol a client speaks, as logs, metrics, traces and the console name it.

use http::Version;

/// A client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H3,
    H2,
    Http11,
    Http10,
}

impl Protocol {
    /// The protocols client connections are counted by (an HTTP/1.0 request arrives on an HTTP/1.1
    /// connection).
    pub const CONNECTIONS: [Self; 3] = [Self::H3, Self::H2, Self::Http11];
    /// Every protocol a request is labelled with.
    pub const ALL: [Self; 4] = [Self::H3, Self::H2, Self::Http11, Self::Http10];

    /// The protocol of a request of `version`.
    pub fn of(version: Version) -> Self {
        match version {
            Version::HTTP_3 => Self::H3,
            Version::HTTP_2 => Self::H2,
            Version::HTTP_10 => Self::Http10,
            _ => Self::Http11,
        }
    }

    /// As the `protocol` label and the access log name it.
    pub fn label(self) -> &'static str {
        match self {
            Self::H3 => "h3",
            Self::H2 => "h2",
            Self::Http11 => "http/1.1",
            Self::Http10 => "http/1.0",
        }
    }

    /// The version as `Via` and the trace attributes write it: `1.1`, `2`, `3`.
    pub fn version_number(self) -> &'static str {
        match self {
            Self::H3 => "3",
            Self::H2 => "2",
            Self::Http11 => "1.1",
            Self::Http10 => "1.0",
        }
    }

    /// Its position in [`Protocol::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}
