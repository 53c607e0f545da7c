//! The WebSocket handshake of `/v1/ws` (RFC 6455 §4.2), done here rather than by axum's
//! extractor so that the session gets the TCP socket itself and registers it with the runtime
//! the session runs on (`realtime::runtime`).
//!
//! Why: a socket's readiness events are delivered by the runtime it is registered with. Left on
//! the HTTP runtime, every frame a client sends woke an HTTP thread, which then woke a session
//! thread — two context switches per frame, measured as the largest single cost of fan-out
//! (docs/benchmarks.md, "Realtime fan-out"). Moved, the session's own threads are woken.
//!
//! When the connection is not a plain TCP stream served by `crate::serve` (an embedder's own
//! server, a TLS wrapper), the upgraded connection is used as it is: same protocol, the old
//! cost.

use crate::realtime::runtime::SessionRuntime;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Writes are gathered until a flush or this many bytes, then handed to the kernel at once:
/// frames the writer feeds in a burst share one `send`. The buffer exists only while something
/// waits to be written — an idle connection holds none.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// The transport under a session's WebSocket, with its write buffer.
#[derive(Debug)]
pub struct Io {
    conn: Conn,
    out: Vec<u8>,
}

#[derive(Debug)]
enum Conn {
    /// The TCP socket itself, registered with the session's runtime.
    Tcp(TcpStream),
    /// The connection as hyper upgraded it (not served by `crate::serve`).
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
}

pub type Socket = WebSocketStream<Io>;

/// A valid upgrade request, not yet answered.
#[derive(Debug)]
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Why a request is not a WebSocket upgrade: the status and a one-line reason.
pub type Refused = (StatusCode, &'static str);

fn refuse(status: StatusCode, why: &'static str) -> Refused {
    (status, why)
}

impl Handshake {
    /// Check the request is a WebSocket upgrade (HTTP/1.1, RFC 6455 §4.2.1); a refusal says
    /// which part is wrong.
    pub fn check(
        method: &Method,
        headers: &HeaderMap,
        extensions: &mut axum::http::Extensions,
    ) -> Result<Self, Refused> {
        if method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET"));
        }
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13"));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"));
        };
        let Some(on_upgrade) = extensions.remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(Self { key, on_upgrade })
    }

    /// Answer `101 Switching Protocols` (with `protocol`, if one was chosen) and, once hyper
    /// lets go of the connection, run `session` on `sessions` with the socket registered there.
    ///
    /// Two tasks, one after the other: the handshake's state (the configuration, what `session`
    /// captures) is freed before the session starts, so a long-lived idle connection does not
    /// carry it (an async block keeps its captures' space for its whole life).
    pub fn accept<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        sessions: Arc<SessionRuntime>,
        session: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        let runtime = sessions.clone();
        drop(runtime.spawn(async move {
            let Some(socket) = take_over(on_upgrade, config).await else { return };
            drop(sessions.spawn(session(socket)));
        }));
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        if let Some(p) = protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        response
    }
}

/// Wait for hyper to hand the connection over; take the TCP socket out of the runtime that
/// accepted it and into the current one (a session runtime thread).
async fn take_over(on_upgrade: OnUpgrade, config: WebSocketConfig) -> Option<Socket> {
    let upgraded = on_upgrade.await.ok()?;
    Some(match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = TcpStream::from_std(parts.io.into_inner().into_std().ok()?).ok()?;
            let read = parts.read_buf.to_vec();
            WebSocketStream::from_partially_read(
                Io::new(Conn::Tcp(tcp)),
                read,
                Role::Server,
                Some(config),
            )
            .await
        }
        Err(upgraded) => {
            let io = Io::new(Conn::Upgraded(TokioIo::new(upgraded)));
            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
        }
    })
}

impl Conn {
    fn reader(&mut self) -> Pin<&mut (dyn AsyncRead + Send + Unpin)> {
        match self {
            Conn::Tcp(s) => Pin::new(s),
            Conn::Upgraded(s) => Pin::new(s),
        }
    }

    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Send + Unpin)> {
        match self {
            Conn::Tcp(s) => Pin::new(s),
            Conn::Upgraded(s) => Pin::new(s),
        }
    }
}

impl Io {
    fn new(conn: Conn) -> Self {
        Self { conn, out: Vec::new() }
    }

    fn poll_conn_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.conn.writer().poll_write(cx, buf)
    }

    /// Hand everything buffered to the connection; the buffer is then released.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let written = self.poll_conn_write(cx, &out);
            self.out = out;
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => drop(self.out.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out = Vec::new();
        Poll::Ready(Ok(()))
    }
}

/// What is still buffered when the socket is dropped goes to the kernel if it takes it at once.
/// The WebSocket library answers a peer's Close and then reports the connection closed without a
/// flush (RFC 6455 §5.5.1 has the server close the TCP connection right after): without this, that
/// echo would die in the buffer and the peer would see 1006 instead of its own code.
impl Drop for Io {
    fn drop(&mut self) {
        if let (Conn::Tcp(s), false) = (&self.conn, self.out.is_empty()) {
            let _ = s.try_write(&self.out);
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().conn.reader().poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + buf.len() > WRITE_BUFFER {
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if !this.out.is_empty() {
                return Poll::Pending;
            }
        }
        if buf.len() >= WRITE_BUFFER {
            return this.poll_conn_write(cx, buf);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        this.conn.writer().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        this.conn.writer().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Io, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, peer) = tokio::join!(listener.accept(), peer);
        (Io::new(Conn::Tcp(accepted.unwrap().0)), peer.unwrap())
    }

    fn upgrade_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        h
    }

    fn refusal(method: Method, headers: &HeaderMap) -> Refused {
        let mut extensions = axum::http::Extensions::new();
        Handshake::check(&method, headers, &mut extensions).expect_err("refused")
    }

    #[test]
    fn a_request_that_is_not_a_websocket_upgrade_is_refused_with_the_reason() {
        assert_eq!(refusal(Method::POST, &upgrade_headers()).0, StatusCode::METHOD_NOT_ALLOWED);
        for (name, value, status) in [
            (header::CONNECTION, "keep-alive", StatusCode::UPGRADE_REQUIRED),
            (header::UPGRADE, "h2c", StatusCode::UPGRADE_REQUIRED),
            (header::SEC_WEBSOCKET_VERSION, "8", StatusCode::BAD_REQUEST),
        ] {
            let mut h = upgrade_headers();
            h.insert(name.clone(), HeaderValue::from_static(value));
            assert_eq!(refusal(Method::GET, &h).0, status, "{name}: {value}");
        }
        let mut h = upgrade_headers();
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(
            refusal(Method::GET, &h),
            (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing")
        );
        // Everything right, but the connection was not served by hyper with upgrades.
        assert_eq!(refusal(Method::GET, &upgrade_headers()).0, StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // RFC 6455 §1.3's worked example.
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_the_buffer_is_released_after_it() {
        let (mut io, mut peer) = pair().await;
        for part in [&b"one "[..], b"two ", b"three"] {
            io.write_all(part).await.unwrap();
        }
        let mut buf = [0u8; 64];
        assert!(
            matches!(peer.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "nothing is sent before the flush"
        );
        io.flush().await.unwrap();
        assert_eq!(io.out.capacity(), 0, "an idle connection holds no write buffer");
        let mut got = vec![0u8; 13];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
    }

    #[tokio::test]
    async fn what_is_buffered_at_drop_is_still_sent() {
        let (mut io, mut peer) = pair().await;
        io.write_all(b"close echo").await.unwrap();
        drop(io);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"close echo");
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_buffer_arrives_whole_and_in_order() {
        let (mut io, mut peer) = pair().await;
        let sent: Vec<u8> = (0..5 * WRITE_BUFFER + 123).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 5 * WRITE_BUFFER + 123];
            peer.read_exact(&mut got).await.map(|_| got)
        });
        for chunk in sent.chunks(700) {
            io.write_all(chunk).await.unwrap();
        }
        io.write_all(&[]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), sent);
    }
}
