//! Cross-process fan-out benchmark: what Redis adds to a room message's delivery.
//!
//! One run, three set-ups on the same PostgreSQL, the same load: rooms of `--room-size`
//! members, one sender per room at `--rate` messages/s for `--seconds`:
//! 1. one process, no Redis (the baseline);
//! 2. one process with Redis (every fan-out is also published to Redis);
//! 3. two processes with Redis, each room's members split between them, senders on the first.
//!
//! Latency is measured per delivery from the send time in the payload (one machine, one
//! clock) and reported separately for receivers on the sender's process and on the other.
//! Server CPU is the sync-server processes' (from /proc; Redis's own is not counted).
//! Prints markdown rows for docs/benchmarks.md (`make bench-cluster`).

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use pf2_e2e::cluster::{Node, NodeConfig, postgres_url, redis_url, tenant, token};
use sdk_core::protocol::{ClientFrame, Codec, ServerFrame};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Messages per second per room.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `getconf CLK_TCK`, for the CPU readings from /proc.
    #[arg(long, default_value_t = 100.0)]
    clock_ticks: f64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn text(f: &ClientFrame) -> Message {
    Message::Text(String::from_utf8(Codec::Json.encode(f)).unwrap().into())
}

#[derive(Default)]
struct Samples {
    local: Vec<u64>,
    remote: Vec<u64>,
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(node: &Node, token: &str, client: &str, room: &str) -> Ws {
    let url = format!("ws://{}/v1/ws?token={token}&clientId={client}", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    ws.send(text(&ClientFrame::JoinRoom { room_id: room.parse().unwrap() })).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Ok(ServerFrame::RoomJoined { .. }) =
                Codec::Json.decode::<ServerFrame>(t.as_bytes(), usize::MAX)
        {
            break;
        }
    }
    ws
}

/// Run the load against `nodes` (members alternate between them; senders on the first).
async fn measure(label: &str, nodes: &[Node], args: &Args) {
    let t = tenant();
    let tok = token(&t, "load", &[]);
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for r in 0..args.rooms {
        let room = format!("room-{r}");
        for m in 1..args.room_size {
            let node_ix = m % nodes.len();
            let ws = open(&nodes[node_ix], &tok, &format!("r{r}-m{m}"), &room).await;
            let samples = samples.clone();
            let local = node_ix == 0;
            readers.push(tokio::spawn(async move {
                let (_, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    let Message::Text(t) = msg else { continue };
                    if let Ok(ServerFrame::Message { payload, .. }) =
                        Codec::Json.decode::<ServerFrame>(t.as_bytes(), usize::MAX)
                        && let Some(sent) = payload["t"].as_u64()
                    {
                        let lat = now_us().saturating_sub(sent);
                        let mut s = samples.lock().unwrap();
                        if local { s.local.push(lat) } else { s.remote.push(lat) }
                    }
                }
            }));
        }
        senders.push((room.clone(), open(&nodes[0], &tok, &format!("r{r}-sender"), &room).await));
    }
    let cpu = |nodes: &[Node]| -> f64 {
        nodes.iter().map(|n| pf2_e2e::cpu_seconds(n.pid(), args.clock_ticks).unwrap_or(0.0)).sum()
    };
    let cpu_before = cpu(nodes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    let rate = args.rate;
    for (room, ws) in senders {
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let drain = tokio::spawn(async move { while rx.next().await.is_some() {} });
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut sent = 0u64;
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let f = ClientFrame::Message {
                    message_id: None,
                    message_type: "bench".into(),
                    interaction_class: None,
                    recipient_id: None,
                    room_id: Some(room.parse().unwrap()),
                    payload: serde_json::json!({ "t": now_us() }),
                    metadata: None,
                };
                if tx.send(text(&f)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            drain.abort();
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    // Let in-flight deliveries land: wait until the count stops growing (bounded).
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = {
            let s = samples.lock().unwrap();
            s.local.len() + s.remote.len()
        };
        if n == last {
            break;
        }
        last = n;
    }
    let cpu_used = cpu(nodes) - cpu_before;
    for r in readers {
        r.abort();
    }
    let mut s = samples.lock().unwrap();
    let expected = sent as usize * (args.room_size - 1);
    let delivered = s.local.len() + s.remote.len();
    let per_s = delivered as f64 / args.seconds as f64;
    let (lp50, lp99) = (pct(&mut s.local, 0.5), pct(&mut s.local, 0.99));
    let (rp50, rp99) = (pct(&mut s.remote, 0.5), pct(&mut s.remote, 0.99));
    println!(
        "| {label} | {delivered} of {expected} | {per_s:.0} | {cpu_used:.2} | {:.0} | {lp50:.2} / {lp99:.2} | {} |",
        delivered as f64 / cpu_used,
        if s.remote.is_empty() { "—".to_string() } else { format!("{rp50:.2} / {rp99:.2}") }
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "Cross-process fan-out: {} rooms of {}, 1 sender per room at {} msg/s, {} s, PostgreSQL",
        args.rooms, args.room_size, args.rate, args.seconds
    );
    println!();
    println!(
        "| set-up | delivered | deliveries/s | server CPU s (sync-server processes) | deliveries per CPU-second | same process p50 / p99 ms | other process p50 / p99 ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let single = NodeConfig { database_url: postgres_url(), redis_url: None, env: vec![] };
    let node = Node::start("single", &single).await;
    measure("one process, no Redis", std::slice::from_ref(&node), &args).await;
    drop(node);
    let clustered = NodeConfig { redis_url: Some(redis_url()), ..single };
    let node = Node::start("single+redis", &clustered).await;
    let http = reqwest::Client::new();
    node.wait_health(&http, "healthy").await;
    measure("one process, Redis", std::slice::from_ref(&node), &args).await;
    drop(node);
    let a = Node::start("a", &clustered).await;
    let b = Node::start("b", &clustered).await;
    a.wait_health(&http, "healthy").await;
    b.wait_health(&http, "healthy").await;
    measure("two processes, Redis", &[a, b], &args).await;
}
