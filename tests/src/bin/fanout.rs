//! Fan-out load generator: N WebSocket connections in rooms of R members; S members of each room
//! send at M messages/s; every other member receives. Reports deliveries per server CPU-second
//! (from /proc) and p50 / p99 delivery latency, or — with `--idle` — resident memory per idle
//! connection. Speaks three servers' protocols so one run compares like with like:
//! `native` (PF-2's /v1/ws), `floor` (bin/broadcast-floor), `socketio` (a Socket.IO 4 server).

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use pf2_e2e::{cpu_seconds, rss_kib};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Native,
    Floor,
    Socketio,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// host:port
    #[arg(long)]
    addr: String,
    /// The server process, for CPU and memory readings.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value = "")]
    token: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    #[arg(long, default_value_t = 1)]
    senders_per_room: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 100.0)]
    clock_ticks: f64,
    /// Only open idle connections and report memory per connection.
    #[arg(long)]
    idle: bool,
    #[arg(long, default_value = "")]
    label: String,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open one connection, already in its room.
async fn open(a: &Args, i: usize, room: &str) -> anyhow::Result<Ws> {
    let url = match a.target {
        Target::Native => format!("ws://{}/v1/ws?token={}&clientId=load-{i}", a.addr, a.token),
        Target::Floor => format!("ws://{}/?room={room}", a.addr),
        Target::Socketio => {
            format!("ws://{}/socket.io/?EIO=4&transport=websocket&room={room}", a.addr)
        }
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let next_text = async |ws: &mut Ws| -> anyhow::Result<String> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(_)) => continue,
                other => anyhow::bail!("connection ended during setup: {other:?}"),
            }
        }
    };
    match a.target {
        Target::Native => {
            let connected = next_text(&mut ws).await?;
            anyhow::ensure!(connected.contains("\"connected\""), "not connected: {connected}");
            ws.send(Message::Text(
                json!({"v": 1, "type": "join_room", "roomId": room}).to_string().into(),
            ))
            .await?;
            let joined = next_text(&mut ws).await?;
            anyhow::ensure!(joined.contains("room_joined"), "not joined: {joined}");
        }
        Target::Floor => {}
        Target::Socketio => {
            let open = next_text(&mut ws).await?;
            anyhow::ensure!(open.starts_with('0'), "no engine.io open: {open}");
            ws.send(Message::Text(format!("40{}", json!({"token": a.token})).into())).await?;
            let connect = next_text(&mut ws).await?;
            anyhow::ensure!(connect.starts_with("40"), "no socket.io connect: {connect}");
        }
    }
    Ok(ws)
}

fn outgoing(target: Target, room: &str, t: u64) -> Message {
    let text = match target {
        Target::Native => {
            json!({"v": 1, "type": "message", "messageType": "bench", "roomId": room, "payload": {"t": t}}).to_string()
        }
        Target::Floor => json!({"t": t}).to_string(),
        Target::Socketio => format!("42{}", json!(["message", {"t": t}])),
    };
    Message::Text(text.into())
}

/// The send time of a relayed benchmark message, if `text` is one. Scanned, not parsed: every
/// target relays the payload `{"t":<µs>}`, and the load generator (which shares the machine with
/// the server) must not spend more per message on one server's larger frames than on another's —
/// parsing PF-2's ~230-byte frames into a `Value` cost the generator several times the floor's
/// 9-byte ones, and its own queueing showed up as server latency.
fn sent_at(target: Target, text: &str) -> Option<u64> {
    let body = match target {
        Target::Native if !text.contains(r#""type":"message""#) => return None,
        Target::Native | Target::Floor => text,
        Target::Socketio => text.strip_prefix("42")?,
    };
    let at = body.find(r#"{"t":"#)? + 5;
    let digits = body[at..].bytes().take_while(u8::is_ascii_digit).count();
    body[at..at + digits].parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Arc::new(Args::parse());
    let rss_before = rss_kib(a.pid)?;
    // Connect in waves so the accept queue is not the thing being measured.
    let mut conns = Vec::with_capacity(a.connections);
    for chunk in (0..a.connections).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|&i| {
            let a = a.clone();
            async move {
                let room = format!("room-{}", i / a.room_size);
                open(&a, i, &room).await.map(|ws| (i, room, ws))
            }
        }))
        .await;
        for o in opened {
            conns.push(o?);
        }
    }
    if a.idle {
        // Let the server settle its per-connection allocations, then read its memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(a.pid)?;
        let per_conn =
            (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / a.connections as f64;
        println!(
            "| {} | {} idle connections | {:.1} MiB → {:.1} MiB | {:.0} bytes / connection |",
            a.label,
            a.connections,
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            per_conn
        );
        return Ok(());
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut senders = Vec::new();
    for (i, room, ws) in conns {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let (target, measuring, delivered, latencies, pong) =
            (a.target, measuring.clone(), delivered.clone(), latencies.clone(), tx.clone());
        tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                if target == Target::Socketio && t.as_str() == "2" {
                    let _ = pong.send(Message::Text("3".into()));
                    continue;
                }
                if let Some(sent) = sent_at(target, &t)
                    && measuring.load(Ordering::Relaxed)
                {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    local.push(now_us().saturating_sub(sent).min(u32::MAX as u64) as u32);
                    if local.len() >= 16 {
                        latencies.lock().unwrap().append(&mut local);
                    }
                }
            }
            latencies.lock().unwrap().append(&mut local);
        });
        if i % a.room_size < a.senders_per_room {
            senders.push((room, tx));
        }
    }
    let running = Arc::new(AtomicBool::new(true));
    for (room, tx) in senders {
        let (running, target, rate) = (running.clone(), a.target, a.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                if tx.send(outgoing(target, &room, now_us())).is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up, not measured
    let cpu0 = cpu_seconds(a.pid, a.clock_ticks)?;
    measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    measuring.store(false, Ordering::SeqCst);
    let cpu = cpu_seconds(a.pid, a.clock_ticks)? - cpu0;
    // Samples still held by receivers (fewer than 16 each) are left out of the percentiles.
    running.store(false, Ordering::SeqCst);
    let n = delivered.load(Ordering::SeqCst);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let rooms = a.connections.div_ceil(a.room_size);
    let expected = rooms as f64
        * a.senders_per_room as f64
        * a.rate
        * (a.room_size - 1) as f64
        * a.seconds as f64;
    println!(
        "| {} | {} | {:.0} | {:.0}% | {:.2} | {:.0} | {:.1} | {:.1} |",
        a.label,
        n,
        n as f64 / a.seconds as f64,
        100.0 * n as f64 / expected,
        cpu,
        n as f64 / cpu.max(0.001),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
