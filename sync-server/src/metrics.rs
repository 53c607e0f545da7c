//! Prometheus text metrics: labelled counters, gauges and one latency histogram family,
//! rendered by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS_MS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0];

type Key = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS_MS.len()],
    sum_ms: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Hot-path counters (one increment per realtime message): atomics, no lock, no allocation.
    pub ws_messages_in: std::sync::atomic::AtomicU64,
    pub ws_messages_out: std::sync::atomic::AtomicU64,
    counters: Mutex<BTreeMap<Key, u64>>,
    gauges: Mutex<BTreeMap<Key, f64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (name.to_string(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn render_labels(labels: &[(String, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

impl Metrics {
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], n: u64) {
        *self.counters.lock().expect("metrics lock").entry(key(name, labels)).or_default() += n;
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.lock().expect("metrics lock").get(&key(name, labels)).copied().unwrap_or(0)
    }

    pub fn set_gauge(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.gauges.lock().expect("metrics lock").insert(key(name, labels), v);
    }

    pub fn observe(&self, name: &str, labels: &[(&str, &str)], d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let mut h = self.histograms.lock().expect("metrics lock");
        let e = h.entry(key(name, labels)).or_default();
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                e.buckets[i] += 1;
            }
        }
        e.sum_ms += ms;
        e.count += 1;
    }

    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE pf2_ws_messages_in_total counter");
        let _ = writeln!(out, "pf2_ws_messages_in_total {}", self.ws_messages_in.load(Relaxed));
        let _ = writeln!(out, "# TYPE pf2_ws_messages_out_total counter");
        let _ = writeln!(out, "pf2_ws_messages_out_total {}", self.ws_messages_out.load(Relaxed));
        let mut last = String::new();
        for ((name, labels), v) in self.counters.lock().expect("metrics lock").iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name.clone();
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
        }
        for ((name, labels), v) in self.gauges.lock().expect("metrics lock").iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name.clone();
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
        }
        for ((name, labels), Histogram { buckets, sum_ms: sum, count }) in
            self.histograms.lock().expect("metrics lock").iter()
        {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name.clone();
            }
            for (b, n) in BUCKETS_MS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {n}",
                    render_labels(labels, Some(("le", b.to_string())))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                render_labels(labels, Some(("le", "+Inf".into())))
            );
            let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels, None));
            let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels, None));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc("pf2_requests_total", &[("route", "/x"), ("status", "200")]);
        m.inc("pf2_requests_total", &[("route", "/x"), ("status", "200")]);
        m.set_gauge("pf2_up", &[], 1.0);
        m.observe("pf2_latency_ms", &[], Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("# TYPE pf2_requests_total counter"));
        assert!(text.contains("pf2_requests_total{route=\"/x\",status=\"200\"} 2"));
        assert!(text.contains("pf2_up 1"));
        assert!(text.contains("pf2_latency_ms_bucket{le=\"5\"} 1"));
        assert!(text.contains("pf2_latency_ms_count 1"));
    }
}
