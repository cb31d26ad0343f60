//! One QUIC connection: the handshake (0-RTT allowed only when configured, and then only for safe methods
//! until it completes), the HTTP/3 connection over our transport, one task per request stream with its
//! head bounded by `server.header_read_timeout`, and on shutdown GOAWAY, the open requests finished, a
//! short linger and a close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio_util::task::TaskTracker;

use super::request::{serve_request, Handshake, Incoming};
use super::transport::{self, Notes};
use crate::metrics;
use crate::protocol::Protocol;
use crate::proxy::{ClientInfo, Core};
use crate::runtime::{Counted, Shutdown};

/// The HTTP/3 application error code for a clean close (RFC 9114 8.1).
const H3_NO_ERROR: u32 = 0x100;
/// The HTTP/3 application error code for a peer generating excessive load (RFC 9114 8.1).
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// What a connection's requests need from the configuration it was accepted under.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub header_read_timeout: Duration,
    pub client_body_timeout: Duration,
    pub max_header_bytes: u64,
    pub early_data: bool,
}

pub(super) async fn serve_connection(
    incoming: quinn::Incoming,
    handshake: Option<Counted>,
    open: Counted,
    core: Arc<Core>,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let handshaken = async {
        let connecting = incoming.accept()?;
        anyhow::Ok(if settings.early_data {
            match connecting.into_0rtt() {
                Ok((connection, accepted)) => (connection, Handshake::pending(accepted)),
                Err(connecting) => (connecting.await?, Handshake::complete()),
            }
        } else {
            (connecting.await?, Handshake::complete())
        })
    };
    // Shutdown drains requests, not handshakes: one still in progress is abandoned.
    let handshaken = tokio::select! {
        handshaken = handshaken => handshaken,
        () = shutdown.begun() => return Ok(()),
    };
    metrics::record_quic_handshake(handshaken.is_ok());
    drop(handshake);
    let (connection, handshake) = handshaken?;
    let shared = Arc::clone(core.shared());
    // Counted once the handshake has proven the address, so a spoofed one cannot take another's share.
    let Some(client) = shared.admit_quic_client(connection.remote_address()) else {
        connection.close(
            VarInt::from_u32(H3_EXCESSIVE_LOAD),
            b"too many connections from this address",
        );
        return Ok(());
    };
    let handshake = Arc::new(handshake);
    let _open = (open, client, shared.connection_open(Protocol::H3));
    let stats_source = connection.clone();
    let served = serve_h3(connection, handshake, core, settings, shutdown).await;
    metrics::record_quic_connection(&stats_source.stats());
    served
}

async fn serve_h3(
    connection: quinn::Connection,
    handshake: Arc<Handshake>,
    core: Arc<Core>,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let peer = connection.remote_address();
    let closer = connection.clone();
    let client = ClientInfo {
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        tls: true,
    };

    // The request streams pass a tee that checks each field section for what h3 lets through.
    let notes = Notes::default();
    let tee_limit = usize::try_from(settings.max_header_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(16);
    let mut h3 = h3::server::builder()
        .max_field_section_size(settings.max_header_bytes)
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSocket over HTTP/3 (RFC 9220).
        .enable_extended_connect(true)
        .send_grease(true)
        .build::<_, Bytes>(transport::Connection::new(connection, notes.clone(), tee_limit))
        .await?;
    let requests = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.begun() => {
                // GOAWAY: the client opens no new requests here; those already accepted run to the end,
                // then the connection closes without waiting for the client to hang up.
                h3.shutdown(1).await?;
                requests.close();
                requests.wait().await;
                // A finished response may still be in flight unacknowledged; closing now would discard it.
                // Give the client a few round trips to close first (it usually does, after GOAWAY).
                let linger = (closer.rtt() * 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
                if tokio::time::timeout(linger, closer.closed()).await.is_err() {
                    closer.close(VarInt::from_u32(H3_NO_ERROR), b"shutdown");
                }
                return Ok(());
            }
            accepted = h3.accept() => accepted,
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (core, handshake, notes) = (Arc::clone(&core), Arc::clone(&handshake), notes.clone());
                let header_read_timeout = settings.header_read_timeout;
                let body_timeout = settings.client_body_timeout;
                requests.spawn(async move {
                    match tokio::time::timeout(header_read_timeout, resolver.resolve_request()).await {
                        Ok(Ok((request, stream))) => {
                            let Some(claim) = notes.claim(stream.id()) else {
                                return;
                            };
                            let handshake = &handshake;
                            let request = Incoming {
                                request,
                                stream,
                                malformed: claim.malformed,
                                websocket: claim.websocket,
                                handshake,
                                body_timeout,
                            };
                            // A client that stops the response stream has given up: so does the proxy, and
                            // the upstream request is abandoned with everything it holds.
                            tokio::select! {
                                () = serve_request(request, &core, client) => {}
                                () = claim.stopped => {
                                    tracing::debug!(peer = %client.peer, "HTTP/3 request cancelled by the client");
                                }
                            }
                        }
                        // h3 has already answered: 431 for an oversized header section, H3_MESSAGE_ERROR else.
                        Ok(Err(error)) => {
                            tracing::debug!(peer = %client.peer, "HTTP/3 request refused: {error}")
                        }
                        // Dropping the half-read stream stops it and frees what it buffered.
                        Err(_) => tracing::debug!(
                            peer = %client.peer,
                            "HTTP/3 request head not received within {header_read_timeout:?}"
                        ),
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(error) if error.is_h3_no_error() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    }
}
