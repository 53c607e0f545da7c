//! The floor for the fan-out benchmark: a bare tokio-tungstenite server. A client connects to
//! `ws://host/?room=NAME`; every text message it sends goes to every other connection of the room.
//! No auth, no protocol, no limits: the least work a room relay can do.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<(u64, Message)>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3101".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let mut next = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next += 1;
        let (id, rooms) = (next, rooms.clone());
        tokio::spawn(async move {
            let mut room = String::new();
            // tungstenite's callback signature fixes the (large) error type.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, resp: Response| {
                room = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("room="))
                    .unwrap_or("default")
                    .to_string();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let tx = rooms
                .lock()
                .unwrap()
                .entry(room)
                .or_insert_with(|| broadcast::channel(1024).0)
                .clone();
            let mut rx = tx.subscribe();
            let (mut sink, mut stream) = ws.split();
            let writer = tokio::spawn(async move {
                while let Ok((from, msg)) = rx.recv().await {
                    if from != id && sink.send(msg).await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_text() {
                    let _ = tx.send((id, msg));
                }
            }
            writer.abort();
        });
    }
}
