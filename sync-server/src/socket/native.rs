//! `GET /v1/ws`: the native WebSocket transport, speaking sdk-core's protocol
//! (docs/protocol.md). It turns WebSocket messages into [`ClientFrame`]s for the connection's
//! [`Session`] and writes the session's mailbox back out; everything else is the session's.
//!
//! One connection = one reader loop and one writer task. The writer drains the connection's
//! bounded [`Mailbox`]: hub fan-out never waits (a full mailbox disconnects the slow consumer);
//! replies and the event stream (Class B) wait for room, so replay is paced by the client's
//! reading speed. Nothing is unbounded.

use super::session::{self, CLOSE_AUTH, CLOSE_NORMAL, CLOSE_TRY_AGAIN, NATIVE, Refusal, Session};
use super::upgrade::{Handshake, Socket};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::realtime::mailbox::{Closing, Mailbox, Next, Queued};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use sdk_core::ErrorCode;
use sdk_core::ids::ClientId;
use sdk_core::protocol::{ClientFrame, Codec, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, ServerFrame};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake may wait for the peer's Close.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

type WsSink = futures_util::stream::SplitSink<Socket, Message>;
type Stream = futures_util::stream::SplitStream<Socket>;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct WsQuery {
    /// The bearer token (browsers cannot set headers on a WebSocket); or send it in the
    /// first frame, `{"v":1,"type":"auth","token":…}`.
    token: Option<String>,
    /// The SDK installation connecting (its `clientSeq` sequence is resumed).
    client_id: Option<String>,
    /// `batch=1`: frames waiting together go out as one `batch` message (the client
    /// understands them; see `ServerFrame::Batch`).
    batch: Option<String>,
}

impl WsQuery {
    fn batch(&self) -> bool {
        matches!(self.batch.as_deref(), Some("1" | "true"))
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `GET /v1/ws`: the native WebSocket protocol (docs/protocol.md). This is the HTTP/1.1
/// upgrade only: a request without `Connection: Upgrade`, `Upgrade: websocket`,
/// `Sec-WebSocket-Version: 13` and `Sec-WebSocket-Key` is refused before anything else. Offer
/// `pf2.v1.json` (default) or `pf2.v1.msgpack` in `Sec-WebSocket-Protocol`.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "realtime",
    summary = "The native WebSocket protocol (docs/protocol.md); token by ?token= or the first frame",
    params(WsQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; frames as docs/protocol.md"),
        (status = 400, description = "A WebSocket header is wrong (`Sec-WebSocket-Version` must be 13, `Sec-WebSocket-Key` present)", body = String, content_type = "text/plain"),
        (status = 403, description = "AUTHZ_FAILED: this Origin may not open a socket (`--cors-allowed-origins`)", body = crate::error::ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade (or one this connection cannot make)", body = String, content_type = "text/plain"),
        (status = 503, description = "The connection limit is reached; `Retry-After` says when to come back", body = String, content_type = "text/plain"),
    ),
)]
pub async fn upgrade(
    State(state): State<AppState>,
    method: Method,
    mut extensions: axum::http::Extensions,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
) -> Response {
    let handshake = match Handshake::check(&method, &headers, &mut extensions) {
        Ok(h) => h,
        Err(refused) => return refused.into_response(),
    };
    let ip = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    match session::admission(
        &state,
        NATIVE,
        header(&headers, "origin"),
        header(&headers, "host"),
        &ip,
    )
    .await
    {
        Ok(()) => {}
        Err(Refusal::Origin) => {
            return ApiError::new(ErrorCode::AuthzFailed, "this origin may not open a socket")
                .into_response();
        }
        Err(Refusal::Capacity) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "5")],
                "connection limit reached",
            )
                .into_response();
        }
    }
    let offered: Vec<&str> = header(&headers, "sec-websocket-protocol")
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let (codec, protocol) = if offered.contains(&MSGPACK_SUBPROTOCOL) {
        (Codec::MessagePack, Some(MSGPACK_SUBPROTOCOL))
    } else if offered.contains(&JSON_SUBPROTOCOL) {
        (Codec::Json, Some(JSON_SUBPROTOCOL))
    } else {
        (Codec::Json, None)
    };
    let limit = state.limits.ws_frame_bytes;
    let meta =
        Meta { ip, user_agent: header(&headers, "user-agent").unwrap_or_default().to_string() };
    let config = WebSocketConfig::default()
        // The library refuses frames far over the limit; the session enforces the limit exactly
        // and closes with 1009.
        .max_message_size(Some(limit * 2))
        .max_frame_size(Some(limit * 2))
        // Small per-connection buffers: an idle socket should cost kilobytes, not the library's
        // 128 KiB defaults. The read buffer holds a typical client frame (a push, a presence
        // update, a sync message while typing: 100–400 bytes); a larger frame grows it to the
        // frame's size once its header is read, so it costs one more read, not one per 512
        // bytes. The library passes each written frame on at once; the socket's own buffer
        // (`upgrade::WRITE_BUFFER`), which an idle connection does not hold, gathers a burst
        // into one `send` (see `write_loop`).
        .read_buffer_size(512)
        .write_buffer_size(0);
    // The session, and its socket, move to the sessions' runtime; nothing stays on this one.
    let sessions = state.sessions.clone();
    handshake.accept(protocol, config, sessions, move |socket| run(socket, state, codec, q, meta))
}

#[derive(Debug, Clone)]
struct Meta {
    ip: String,
    user_agent: String,
}

fn closing(code: u16, reason: &'static str) -> Closing {
    Closing { code, reason }
}

/// An encoded frame as a WebSocket message (JSON text or MessagePack binary).
fn message(codec: Codec, bytes: bytes::Bytes) -> Message {
    match codec {
        Codec::Json => Message::Text(Utf8Bytes::try_from(bytes).expect("JSON is UTF-8")),
        Codec::MessagePack => Message::Binary(bytes),
    }
}

fn encode(codec: Codec, frame: &ServerFrame) -> Message {
    message(codec, codec.encode(frame).into())
}

fn close_message(c: &Closing) -> Message {
    Message::Close(Some(CloseFrame { code: c.code.into(), reason: c.reason.into() }))
}

/// Not `async`: the socket is split before the connection's future is built, so that future
/// holds the two small halves, not the 368-byte socket, for its whole life (an async fn keeps
/// its arguments' space even after they are moved out).
fn run(
    socket: Socket,
    state: AppState,
    codec: Codec,
    q: WsQuery,
    meta: Meta,
) -> impl std::future::Future<Output = ()> {
    let (sink, stream) = socket.split();
    connection(sink, stream, state, codec, q, meta)
}

async fn connection(
    mut sink: WsSink,
    mut stream: Stream,
    state: AppState,
    codec: Codec,
    q: WsQuery,
    meta: Meta,
) {
    let batch = q.batch();
    let (identity, client) = match Box::pin(authenticate(&mut stream, &state, codec, q)).await {
        Ok(ok) => ok,
        Err((e, reason)) => {
            let details = json!({ "ip": meta.ip, "userAgent": meta.user_agent });
            session::auth_failed(&state, NATIVE, &e.message, details);
            let frame = ServerFrame::error(e.code, e.message, None);
            let _ = sink.send(encode(codec, &frame)).await;
            let _ = sink.send(close_message(&closing(CLOSE_AUTH, reason))).await;
            drain_until_close(&mut stream).await;
            return;
        }
    };
    let details = json!({ "ip": meta.ip, "userAgent": meta.user_agent });
    // Boxed, as every await below that is not the read loop's: an async fn is as large as its
    // largest await, and this future lives as long as the (mostly idle) connection.
    let mut session = Box::pin(Session::open(state, NATIVE, identity, client, details)).await;
    let mailbox = session.tx.clone();
    let mut writer = tokio::spawn(write_loop(sink, mailbox.clone(), codec, batch));
    let (outcome, ended) = read_loop(&mut session, &mut stream, &mut writer, codec).await;
    let reason = outcome.reason;
    match ended {
        // Nothing more can be sent: answer the peer's Close (if it sent one) at once.
        Ended::PeerClosed | Ended::PeerGone => mailbox.abandon(),
        Ended::Server => mailbox.close(Some(outcome)),
    }
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    if ended == Ended::Server {
        drain_until_close(&mut stream).await;
    }
    Box::pin(session.close(reason)).await;
}

/// Who ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client sent a Close: echo its code.
    PeerClosed,
    /// The client went away without one (EOF, reset, a dead writer).
    PeerGone,
    /// The server closes (limits, deadlines, a slow consumer): its Close, then the drain.
    Server,
}

/// Read frames until the connection ends: translate each into a [`ClientFrame`] for the session.
async fn read_loop(
    session: &mut Session,
    stream: &mut Stream,
    writer: &mut tokio::task::JoinHandle<()>,
    codec: Codec,
) -> (Closing, Ended) {
    let gone = || (closing(CLOSE_NORMAL, "client closed"), Ended::PeerGone);
    loop {
        // One timer for both deadlines (an idle connection carries one `Sleep`, not two).
        let msg = tokio::select! {
            // The writer stops on its own only for a slow consumer or a dead socket.
            _ = &mut *writer => {
                return if session.tx.killed() {
                    (closing(CLOSE_TRY_AGAIN, "slow consumer"), Ended::Server)
                } else {
                    gone()
                };
            }
            _ = tokio::time::sleep_until(session.deadline()) => {
                return (session.expired(), Ended::Server);
            }
            m = stream.next() => m,
        };
        let bytes = match msg {
            None | Some(Err(_)) => return gone(),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(CLOSE_NORMAL);
                return (closing(code, "client closed"), Ended::PeerClosed);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                session.last_heard = std::time::Instant::now();
                continue;
            }
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Binary(b))) => b.to_vec(),
        };
        if let Some(c) = session.too_large(bytes.len()) {
            return (c, Ended::Server);
        }
        // Boxed: the handlers (push → reconcile …) are large state machines; inline, every
        // idle connection would carry their size in its task.
        if let Some(c) = Box::pin(on_frame(session, codec, bytes)).await {
            return (c, Ended::Server);
        }
    }
}

/// One frame from the client: decoded, admitted by the session (rate limit), handled.
async fn on_frame(session: &mut Session, codec: Codec, bytes: Vec<u8>) -> Option<Closing> {
    let (frame, traceparent) =
        match codec.decode_traced::<ClientFrame>(&bytes, session.frame_limit()) {
            Ok((frame, traceparent)) => (Ok(frame), traceparent),
            Err(e) => (Err(e), None),
        };
    if let Err(c) = session.admit(frame.as_ref().ok()).await {
        return Some(c);
    }
    match frame {
        Ok(frame) => session.handle_traced(frame, traceparent.as_deref()).await,
        Err(e) => session.error(e.into(), None).await,
    }
    None
}

/// The closing handshake (RFC 6455 §7.1.1): after our Close, read — and discard — until the
/// peer's Close or EOF, for at most [`CLOSE_DRAIN`]. Dropping the socket with unread bytes in the
/// kernel's receive buffer makes it send RST, and the client would see 1006 instead of our code.
async fn drain_until_close(stream: &mut Stream) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Authenticate by `?token=` or by the first frame (`auth`), within [`AUTH_TIMEOUT`].
async fn authenticate(
    stream: &mut Stream,
    state: &AppState,
    codec: Codec,
    q: WsQuery,
) -> Result<(Identity, ClientId), (ApiError, &'static str)> {
    let query_client = q
        .client_id
        .map(ClientId::new)
        .transpose()
        .map_err(|e| (ApiError::invalid(e.to_string()), "bad client id"))?;
    if let Some(token) = q.token {
        let identity = state.jwt.verify(&token).map_err(|e| (e, "auth failed"))?;
        let client = query_client.unwrap_or_else(|| {
            ClientId::new(format!("anon-{}", uuid::Uuid::new_v4().simple())).expect("valid")
        });
        return Ok((identity, client));
    }
    let first = tokio::time::timeout(AUTH_TIMEOUT, stream.next())
        .await
        .map_err(|_| (ApiError::auth("no auth frame within 10 s"), "auth timeout"))?;
    let bytes = match first {
        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        _ => return Err((ApiError::auth("the first frame must be auth"), "auth failed")),
    };
    match codec.decode::<ClientFrame>(&bytes, state.limits.ws_frame_bytes) {
        Ok(ClientFrame::Auth { token, client_id }) => {
            let identity = state.jwt.verify(&token).map_err(|e| (e, "auth failed"))?;
            Ok((identity, client_id))
        }
        _ => Err((ApiError::auth("the first frame must be auth"), "auth failed")),
    }
}

/// A batch stops growing once it holds this many bytes (plus its last frame) or frames.
const BATCH_BYTES: usize = 32 * 1024;
const BATCH_FRAMES: usize = 256;

/// For a client that takes batches: `first` and whatever else is queued, as one message. A run
/// alone is sent as its shared batch (built once for every subscriber it went to).
fn gather(first: Queued, mailbox: &Mailbox, codec: Codec) -> Bytes {
    let mut parts: Vec<Bytes> = Vec::new();
    match first {
        Queued::Run(run) if mailbox.is_empty() => return run.encoded_batch(codec),
        Queued::Run(run) => parts.extend(run.frames.iter().map(|f| f.encoded(codec))),
        Queued::One(f) => parts.push(f.encoded(codec)),
    }
    let mut size: usize = parts.iter().map(Bytes::len).sum();
    while size < BATCH_BYTES && parts.len() < BATCH_FRAMES {
        let more = parts.len();
        match mailbox.try_next() {
            Some(Next::Frame(f)) => parts.push(f.encoded(codec)),
            Some(Next::Run(run)) => parts.extend(run.frames.iter().map(|f| f.encoded(codec))),
            _ => break,
        }
        size += parts[more..].iter().map(Bytes::len).sum::<usize>();
    }
    if parts.len() == 1 { parts.swap_remove(0) } else { codec.encode_batch(&parts).into() }
}

/// Feed one item to the sink (buffered, not yet sent: see [`super::upgrade::WRITE_BUFFER`]);
/// how many frames it held.
async fn feed<S>(sink: &mut S, codec: Codec, item: Queued) -> Result<usize, WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match item {
        Queued::One(f) => {
            sink.feed(message(codec, f.encoded(codec))).await?;
            Ok(1)
        }
        Queued::Run(run) => {
            for f in &run.frames {
                sink.feed(message(codec, f.encoded(codec))).await?;
            }
            Ok(run.frames.len())
        }
    }
}

/// The connection's writer: generic over the sink so its batching can be tested without a socket.
async fn write_loop<S>(mut sink: S, mailbox: Arc<Mailbox>, codec: Codec, batch: bool)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    loop {
        let first = match mailbox.next().await {
            Next::Frame(f) => Queued::One(f),
            Next::Run(r) => Queued::Run(r),
            Next::Killed => {
                // A slow consumer: try to say why, but never wait on it.
                let close = close_message(&closing(CLOSE_TRY_AGAIN, "slow consumer"));
                let _ = tokio::time::timeout(Duration::from_millis(100), sink.send(close)).await;
                return;
            }
            Next::Close(c) => {
                if let Some(c) = c {
                    let _ = tokio::time::timeout(CLOSE_DRAIN, sink.send(close_message(&c))).await;
                } else {
                    // The peer closed: the WebSocket library has queued the echo of its Close
                    // (RFC 6455 §5.5.1); a flush sends it.
                    let _ = tokio::time::timeout(CLOSE_DRAIN, sink.flush()).await;
                }
                return;
            }
        };
        let write = async {
            if batch {
                return sink.send(message(codec, gather(first, &mailbox, codec))).await;
            }
            // Everything ready goes into the socket's write buffer, then one flush: the kernel
            // gets one `send` per [`super::upgrade::WRITE_BUFFER`] bytes, not one per frame.
            // Nothing waits for company — an acknowledgement alone is flushed at once.
            let fed = feed(&mut sink, codec, first).await?;
            for item in mailbox.take_ready(BATCH_FRAMES.saturating_sub(fed)) {
                feed(&mut sink, codec, item).await?;
            }
            sink.flush().await
        };
        // Only a blocked write needs the kill signal: it is how a slow consumer is cut off.
        tokio::select! {
            r = write => if r.is_err() { return },
            _ = mailbox.until_killed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::outbound::{Outbound, Run};
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// What the writer did to its sink, in order: `Frame`s fed, `Flush`es.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Did {
        Frame(String),
        Flush,
    }

    /// A sink that records what it is given; every call is ready at once.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Did>>>);

    impl Sink<Message> for Recorder {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), Self::Error> {
            let text = match m {
                Message::Text(t) => t.as_str().to_string(),
                Message::Close(_) => "close".into(),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(Did::Frame(text));
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.lock().unwrap().push(Did::Flush);
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn poke(version: u64) -> Arc<Outbound> {
        Outbound::new(ServerFrame::Poke { version })
    }

    #[tokio::test]
    async fn frames_ready_together_go_out_in_one_flush() {
        let mailbox = Mailbox::new(1024);
        for v in 1..=5 {
            mailbox.offer(poke(v));
        }
        mailbox.push_shared(&Run::new(vec![poke(6), poke(7)]));
        mailbox.close(Some(closing(CLOSE_NORMAL, "done")));
        let sink = Recorder::default();
        write_loop(sink.clone(), mailbox, Codec::Json, false).await;
        let did = sink.0.lock().unwrap().clone();
        let flushes: Vec<usize> =
            did.iter().enumerate().filter(|(_, d)| **d == Did::Flush).map(|(i, _)| i).collect();
        // Seven frames, then one flush; then the close frame (sent and flushed).
        assert_eq!(flushes[0], 7, "{did:?}");
        assert!(did[..7].iter().all(|d| matches!(d, Did::Frame(t) if t.contains("poke"))));
        assert_eq!(did[8], Did::Frame("close".into()));
        assert_eq!(flushes.len(), 2, "{did:?}");
    }

    #[tokio::test]
    async fn a_lone_frame_is_flushed_at_once() {
        let mailbox = Mailbox::new(1024);
        let sink = Recorder::default();
        let writer = tokio::spawn(write_loop(sink.clone(), mailbox.clone(), Codec::Json, false));
        mailbox.offer(poke(1));
        // The writer flushes the single frame without waiting for more: observe the flush.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !sink.0.lock().unwrap().contains(&Did::Flush) {
            assert!(tokio::time::Instant::now() < deadline, "the lone frame was never flushed");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            sink.0.lock().unwrap()[0],
            Did::Frame(r#"{"v":1,"type":"poke","version":1}"#.into())
        );
        mailbox.close(None);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_is_cut_at_the_batch_limit() {
        let mailbox = Mailbox::new(4 * BATCH_FRAMES);
        for v in 0..(BATCH_FRAMES as u64 + 10) {
            mailbox.offer(poke(v));
        }
        mailbox.close(None);
        let sink = Recorder::default();
        write_loop(sink.clone(), mailbox, Codec::Json, false).await;
        let did = sink.0.lock().unwrap().clone();
        let first_flush = did.iter().position(|d| *d == Did::Flush).unwrap();
        assert_eq!(first_flush, BATCH_FRAMES);
        assert_eq!(did.iter().filter(|d| matches!(d, Did::Frame(_))).count(), BATCH_FRAMES + 10);
    }
}
