//! Event-stream load generator (`make bench-streams`), against PF-2's `/v1/ws` and REST:
//!
//! - `publish`: N live subscribers of one tenant's log (`subscribe` from 0), then E events
//!   published one at a time over `POST /api/events` — as fast as one publisher goes, or paced
//!   at `--rate` events/s. Reports publish throughput, POST p99, whether every subscriber got
//!   every event, delivery p50 / p99 (publish → receipt, one clock) and server CPU.
//! - `prepare` + `resume`: N clients follow the log, note their position and go away; E events
//!   are published meanwhile (`prepare` does both, then exits, closing every socket); `resume`
//!   reconnects all N at once from that position and reports the time until each has every
//!   missed event (median and last), server CPU, and events missing, repeated or out of order.
//!   Between the two a script may restart the server.

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use pf2_e2e::cpu_seconds;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Publish,
    Prepare,
    Resume,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// The server process, for CPU readings.
    #[arg(long)]
    pid: u32,
    /// A user token for the subscribers.
    #[arg(long)]
    token: String,
    /// A token with the `service` role, for publishing.
    #[arg(long)]
    service_token: String,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Events per second for `publish` (0: one after another, as fast as the answers come).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// `resume`: the position the clients resume from (what `prepare` printed).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[arg(long, default_value_t = 100.0)]
    clock_ticks: f64,
    #[arg(long, default_value = "")]
    label: String,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// A subscriber's read buffer: a batch of events (a few KiB) fits in one read.
const READ_BUFFER: usize = 16 * 1024;

/// A subscriber following the log from `after`.
async fn subscriber(a: &Args, i: usize, after: u64) -> anyhow::Result<Ws> {
    // As the browser SDK connects: `batch=1`, frames waiting together come as one message.
    let url = format!("ws://{}/v1/ws?token={}&clientId=stream-{i}&batch=1", a.addr, a.token);
    // tungstenite zero-fills its whole read buffer (128 KiB by default) before every read: for
    // 10,000 subscribers reading a few KiB at a time that was a quarter of this process's CPU.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => break,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("connection ended during setup: {other:?}"),
        }
    }
    let subscribe = json!({"v": 1, "type": "subscribe", "after": after});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    Ok(ws)
}

/// Open `n` subscribers in waves of 200 (the accept queue is not what is measured).
async fn subscribers(a: &Arc<Args>, after: u64) -> anyhow::Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(a.subscribers);
    for chunk in (0..a.subscribers).collect::<Vec<_>>().chunks(200) {
        let opened =
            futures_util::future::join_all(chunk.iter().map(|&i| subscriber(a, i, after))).await;
        for ws in opened {
            out.push(ws?);
        }
    }
    Ok(out)
}

/// What a subscriber reads of an event frame (typed, skipping the rest: 10,000 subscribers on
/// the server's own 2 cores, the load generator must not be what is measured).
#[derive(serde::Deserialize)]
struct EventFrame {
    event: Option<Ev>,
    /// A `batch` frame's frames.
    frames: Option<Vec<EventFrame>>,
}

#[derive(serde::Deserialize)]
struct Ev {
    sequence: u64,
}

/// The keys a subscriber looks for in each event, in the order an event frame has them
/// (`sequence`, then the payload's `n` and `sentUs`).
static KEYS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 3]> =
    std::sync::LazyLock::new(|| {
        [b"\"sequence\":".as_slice(), b"\"n\":", b"\"sentUs\":"].map(memchr::memmem::Finder::new)
    });

/// Publishing, 10,000 subscribers on the server's own 2 cores: what a subscriber needs of a
/// message — each event's (sequence, n, sentUs) — found in one forward pass, not parsed
/// (parsing, and then three substring searches over every message, cost the load generator
/// more CPU than the server spent sending). Still every event is counted and its order
/// checked; resume, which checks exactly-once delivery, parses in full.
fn scan_events(text: &str) -> Vec<(u64, u64, u64)> {
    let bytes = text.as_bytes();
    let (mut at, mut out) = (0, Vec::new());
    loop {
        let mut event = [0u64; 3];
        for (value, key) in event.iter_mut().zip(KEYS.iter()) {
            let Some(i) = key.find(&bytes[at..]) else { return out };
            at += i + key.needle().len();
            let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
            *value = text[at..at + digits].parse().unwrap_or(0);
            at += digits;
        }
        out.push((event[0], event[1], event[2]));
    }
}

/// The sequence of each event in a message: one, several (a batch), or none.
fn events_of(text: &str) -> Vec<u64> {
    let Ok(f) = serde_json::from_str::<EventFrame>(text) else { return Vec::new() };
    let frames = f
        .frames
        .unwrap_or_default()
        .into_iter()
        .chain(f.event.map(|e| EventFrame { event: Some(e), frames: None }));
    frames.filter_map(|f| f.event).map(|e| e.sequence).collect()
}

struct Publisher {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Publisher {
    fn new(a: &Args) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("http://{}/api/events", a.addr),
            token: a.service_token.clone(),
        }
    }

    /// Publish `events` in one request; the sequence of the last.
    async fn publish(&self, events: Vec<Value>) -> anyhow::Result<u64> {
        let r = self.http.post(&self.url).bearer_auth(&self.token);
        let r = r.json(&json!({ "events": events })).send().await?;
        anyhow::ensure!(r.status() == 201, "publish answered {}: {}", r.status(), r.text().await?);
        let body: Value = r.json().await?;
        let last = body["results"].as_array().and_then(|r| r.last()).cloned().unwrap_or_default();
        Ok(last["sequence"].as_u64().unwrap_or(0))
    }
}

fn event(n: usize) -> Value {
    json!({
        "eventId": uuid::Uuid::new_v4().to_string(),
        "eventType": "feed.item",
        "timestamp": "2026-12-01T00:00:00Z",
        "payload": { "n": n, "sentUs": now_us() },
        "schemaVersion": "1.0",
    })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// `publish`: every subscriber counts the events it receives and their delivery latency.
async fn publish(a: Arc<Args>) -> anyhow::Result<()> {
    let conns = subscribers(&a, 0).await?;
    let total = a.subscribers as u64 * (a.events as u64 + 1);
    let received = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    for mut ws in conns {
        let (received, warm, done) = (received.clone(), warm.clone(), done_tx.clone());
        let out_of_order = out_of_order.clone();
        let events = a.events;
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(events);
            let (mut seen, mut last, mut disorder) = (0, 0, 0u64);
            'read: while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                for (seq, n, sent) in scan_events(&t) {
                    received.fetch_add(1, Ordering::Relaxed);
                    seen += 1;
                    if seq <= last {
                        disorder += 1;
                    }
                    last = seq;
                    if n == 0 {
                        warm.fetch_add(1, Ordering::Relaxed);
                    } else {
                        lat.push(now_us().saturating_sub(sent));
                    }
                    if seen == events + 1 {
                        break 'read;
                    }
                }
            }
            out_of_order.fetch_add(disorder, Ordering::Relaxed);
            let _ = done.send(lat);
        });
    }
    drop(done_tx);
    let publisher = Publisher::new(&a);
    // Warm-up: one event every subscriber receives, so all of them follow the tail.
    publisher.publish(vec![event(0)]).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while warm.load(Ordering::Relaxed) < a.subscribers as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu0 = cpu_seconds(a.pid, a.clock_ticks)?;
    let me = std::process::id();
    let load0 = cpu_seconds(me, a.clock_ticks)?;
    // The publisher is another service: its own thread, runtime and connection, not queued
    // behind this process's 10,000 subscriber tasks.
    let (events, rate) = (a.events, a.rate);
    let args = a.clone();
    let published = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let publisher = Publisher::new(&args);
            let started = Instant::now();
            let mut posts = Vec::with_capacity(events);
            let mut tick =
                (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
            for n in 1..=events {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                publisher.publish(vec![event(n)]).await?;
                posts.push(t0.elapsed().as_micros() as u64);
            }
            anyhow::Ok((posts, started.elapsed().as_secs_f64()))
        })
    });
    let (mut posts, published_in) =
        tokio::task::spawn_blocking(move || published.join().expect("the publisher thread"))
            .await??;
    let mut lat = Vec::new();
    let wait = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = done_rx.recv().await {
            lat.extend(l);
        }
    });
    let _ = wait.await;
    let cpu = cpu_seconds(a.pid, a.clock_ticks)? - cpu0;
    let load = cpu_seconds(me, a.clock_ticks)? - load0;
    posts.sort_unstable();
    lat.sort_unstable();
    let got = received.load(Ordering::Relaxed);
    let disorder = out_of_order.load(Ordering::Relaxed);
    anyhow::ensure!(disorder == 0, "{disorder} events arrived repeated or out of order");
    println!(
        "| {} | {} | {} | {:.1} | {:.1} | {:.2}% | {:.1} | {:.1} | {:.2} | {:.2} |",
        a.label,
        a.subscribers,
        a.events,
        a.events as f64 / published_in,
        percentile(&posts, 0.99),
        100.0 * got as f64 / total.max(1) as f64,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        cpu,
        load,
    );
    Ok(())
}

/// `prepare`: follow, note the position, go away, and publish what the clients will miss.
async fn prepare(a: Arc<Args>) -> anyhow::Result<()> {
    let mut conns = subscribers(&a, 0).await?;
    let publisher = Publisher::new(&a);
    let position = publisher.publish(vec![event(0)]).await?;
    for ws in &mut conns {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if !events_of(&t).is_empty() => break,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("a subscriber ended before its first event: {other:?}"),
            }
        }
    }
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
    for start in (1..=a.events).step_by(100) {
        let end = (start + 99).min(a.events);
        publisher.publish((start..=end).map(event).collect()).await?;
    }
    println!("{position}");
    Ok(())
}

/// `resume`: everyone back at once from `after`; time until each has every missed event.
async fn resume(a: Arc<Args>) -> anyhow::Result<()> {
    let cpu0 = cpu_seconds(a.pid, a.clock_ticks)?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = subscriber(&a, i, a.after).await?;
            let (mut last, mut bad, mut got) = (a.after, 0u64, 0usize);
            while got < a.events {
                match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        for seq in events_of(&t) {
                            if seq <= last {
                                bad += 1;
                            }
                            last = last.max(seq);
                            got += 1;
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                }
            }
            anyhow::Ok((started.elapsed().as_micros() as u64, got, bad))
        }));
    }
    let mut times = Vec::new();
    let (mut missing, mut bad) = (0usize, 0u64);
    for t in tasks {
        let (at, got, b) = t.await??;
        times.push(at);
        missing += a.events - got.min(a.events);
        bad += b;
    }
    let cpu = cpu_seconds(a.pid, a.clock_ticks)? - cpu0;
    times.sort_unstable();
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
        a.label,
        a.subscribers,
        a.events,
        percentile(&times, 0.5),
        percentile(&times, 1.0),
        cpu,
        missing,
        bad
    );
    Ok(())
}

/// Publishing: the subscribers stand for devices elsewhere, which would take none of the
/// server's CPU. Here they share its 2 cores, so their threads run at `SCHED_IDLE` — the CPU the
/// server, its database and the publisher leave, given up at once when one of those wakes —
/// while the publisher (its own thread, spawned from the main thread) keeps the normal policy.
/// Resume runs at the normal policy, as its peer does.
fn main() -> anyhow::Result<()> {
    let a = Arc::new(Args::parse());
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if a.mode == Mode::Publish {
        rt.on_thread_start(|| {
            use thread_priority::{
                NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
                set_thread_priority_and_policy, thread_native_id,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle)
                .expect("SCHED_IDLE for the subscribers' threads");
        });
    }
    rt.build()?.block_on(async move {
        match a.mode {
            Mode::Publish => publish(a).await,
            Mode::Prepare => prepare(a).await,
            Mode::Resume => resume(a).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{events_of, scan_events};

    /// An event frame as the server writes it (the event's fields in `WireEvent`'s order).
    fn event(seq: u64, n: u64, sent: u64) -> String {
        let event = sdk_core::protocol::WireEvent {
            sequence: seq,
            event_id: "6f1c2a9e-8d3b-4c47-9a3e-2b8f5d7c1e40".into(),
            event_type: "feed.item".into(),
            tenant_id: sdk_core::ids::TenantId::new("t").expect("tenant"),
            timestamp: "2026-12-01T00:00:00.000Z".into(),
            payload: serde_json::json!({ "n": n, "sentUs": sent }),
            metadata: serde_json::json!({ "traceId": "4bf92f3577b34da6a3ce929d0e0e4736" }),
            schema_version: "1.0".into(),
        };
        let event = serde_json::to_string(&event).expect("event");
        format!(r#"{{"v":1,"type":"event","event":{event}}}"#)
    }

    #[test]
    fn a_batch_is_scanned_for_each_events_numbers_in_order() {
        let batch = format!(
            r#"{{"v":1,"type":"batch","frames":[{},{}]}}"#,
            event(7, 1, 100),
            event(8, 2, 200)
        );
        assert_eq!(scan_events(&batch), [(7, 1, 100), (8, 2, 200)]);
        assert_eq!(events_of(&batch), [7, 8]);
        assert_eq!(scan_events(&event(9, 3, 300)), [(9, 3, 300)]);
        assert!(scan_events(r#"{"v":1,"type":"connected"}"#).is_empty());
    }
}
