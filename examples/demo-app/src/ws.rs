//! `GET /ws`: a WebSocket echo over an HTTP/1.1 upgrade. The server's first message is the text
//! `hello from <alloc id>`; then every text or binary message is sent back as it came. Pings are
//! answered and a close is returned by tungstenite itself.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Why a request to `/ws` is not a WebSocket handshake we take: (status, message).
fn check_handshake(headers: &HeaderMap) -> Result<&HeaderValue, (StatusCode, &'static str)> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "GET /ws expects an HTTP/1.1 WebSocket upgrade (upgrade: websocket, connection: upgrade)\n",
        ));
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "GET /ws: only WebSocket version 13 is spoken (sec-websocket-version: 13)\n",
        ));
    }
    headers.get("sec-websocket-key").ok_or((
        StatusCode::BAD_REQUEST,
        "GET /ws: no sec-websocket-key header\n",
    ))
}

/// Answers a `GET /ws`: 101 and an echo task on the upgraded connection, or why not.
pub(crate) fn accept(mut req: Request<Incoming>, alloc_id: &str) -> Response<Full<Bytes>> {
    let key = match check_handshake(req.headers()) {
        Ok(key) => key,
        Err((status, why)) => {
            return Response::builder()
                .status(status)
                .header(UPGRADE, "websocket")
                .header("sec-websocket-version", "13")
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(why.as_bytes())))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))));
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let hello = format!("hello from {alloc_id}");
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                echo(ws, hello).await;
            }
            Err(e) => eprintln!("demo-app: GET /ws: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

/// Sends `hello`, then every text and binary message back, until the peer closes or fails.
async fn echo<S>(mut ws: WebSocketStream<S>, hello: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.send(Message::text(hello)).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
        // Ping: tungstenite queues the pong. Close: it queues the reply, and the next read
        // flushes it and ends the stream.
    }
}
