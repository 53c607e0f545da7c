//! Over real TCP: a server on a loopback port, and a `/v1/ws` client (stock tokio-tungstenite)
//! that speaks the protocol's frames. Waits are for frames or closes; [`SAFETY`] only turns a
//! hang into a failure.

use futures_util::{SinkExt, StreamExt};
use sdk_core::ids::ClientId;
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use std::net::SocketAddr;
use std::time::Duration;
use sync_server::state::AppState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub const SAFETY: Duration = Duration::from_secs(20);

/// A server on a fresh loopback port. Dropping it (or [`Served::stop`]) shuts it down.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    /// Shut the server down gracefully and wait until it has (returns `serve`'s result).
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running").await.expect("the server task did not panic")
    }

    /// Ask the server to shut down without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serve `state` with `sync_server::serve` (the binary's own path) on 127.0.0.1:0.
pub async fn serve(state: AppState) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sync_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Served { addr, stop: Some(stop), task: Some(task) }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open `/v1/ws{query}` with an optional subprotocol and Origin; no frame is exchanged.
pub async fn open(
    addr: SocketAddr,
    query: &str,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let mut req = format!("ws://{addr}/v1/ws{query}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

/// A `/v1/ws` client speaking frames in one codec.
pub struct WsClient {
    pub ws: Ws,
    pub codec: Codec,
}

impl WsClient {
    /// Connect and authenticate with the first frame; returns after `connected`.
    pub async fn connect(addr: SocketAddr, token: &str, client: &str, codec: Codec) -> WsClient {
        let proto = (codec == Codec::MessagePack).then_some("pf2.v1.msgpack");
        let ws = open(addr, "", proto, None).await.unwrap();
        let mut c = WsClient { ws, codec };
        let auth =
            ClientFrame::Auth { token: token.into(), client_id: ClientId::new(client).unwrap() };
        c.send(&auth).await;
        let first = c.recv().await;
        assert!(matches!(first, ServerFrame::Connected { .. }), "{first:?}");
        c
    }

    /// A JSON client over a socket that is already open (its handshake is the caller's).
    pub fn json(ws: Ws) -> WsClient {
        WsClient { ws, codec: Codec::Json }
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        let bytes = self.codec.encode(f);
        let msg = match self.codec {
            Codec::Json => Message::Text(String::from_utf8(bytes).unwrap().into()),
            Codec::MessagePack => Message::Binary(bytes.into()),
        };
        self.ws.send(msg).await.unwrap();
    }

    /// The next protocol frame (panics on close or after the safety timeout).
    pub async fn recv(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(SAFETY, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("ok");
            let bytes = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            };
            return self.codec.decode(&bytes, usize::MAX).unwrap();
        }
    }

    /// Skip frames until one matches.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.recv().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// Read until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(SAFETY, self.ws.next()).await.expect("a close in time") {
                Some(Ok(Message::Close(Some(c)))) => {
                    return (u16::from(c.code), c.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) => return (1006, String::new()),
            }
        }
    }
}
