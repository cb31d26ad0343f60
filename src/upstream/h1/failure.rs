//! How an exchange with a backend fails, as the transport tells whose fault it was.

use std::io;

use crate::error::BoxError;

/// How an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// The request body failed (the client's side): the error it gave.
    Body(BoxError),
    /// Writing to or reading from the backend failed; `responded` says whether any response byte came.
    Io { error: io::Error, responded: bool },
    /// The backend closed the connection; `responded` as above.
    Closed { responded: bool },
    /// The backend sent something that is not a valid HTTP/1.1 response.
    Protocol(&'static str),
    /// No response head within the deadline after the request was sent.
    Timeout,
}
