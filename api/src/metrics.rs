//! Prometheus metrics, written in the text exposition format by hand (a few counters and one
//! histogram do not need a metrics crate).
//!
//! - `thitl_http_requests_total{method,route,status}` and
//!   `thitl_http_request_duration_seconds{method,route}` (histogram), labelled by the route
//!   *pattern* (`/v1/rounds/{id}/next`), never the raw path, so ids do not explode the series;
//! - `thitl_events_appended_total`: events appended through the API;
//! - `thitl_store_head_position`, `thitl_projection_position`, `thitl_projection_lag_events`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latencies: Mutex<BTreeMap<(String, String), Histogram>>,
    events_appended: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            *requests.entry((method.to_string(), route.to_string(), status)).or_default() += 1;
        }
        let seconds = elapsed.as_secs_f64();
        let mut latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = latencies.entry((method.to_string(), route.to_string())).or_default();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    pub fn record_appended(&self, events: usize) {
        self.events_appended.fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The exposition text; `head` and `projected` are the store's and the read models' positions.
    pub fn render(&self, head: u64, projected: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP thitl_http_requests_total HTTP requests answered, by route pattern and status.");
        let _ = writeln!(out, "# TYPE thitl_http_requests_total counter");
        for ((method, route, status), count) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "thitl_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        let _ = writeln!(out, "# HELP thitl_http_request_duration_seconds Time to answer, by route pattern.");
        let _ = writeln!(out, "# TYPE thitl_http_request_duration_seconds histogram");
        for ((method, route), histogram) in self.latencies.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
                let _ = writeln!(out, "thitl_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ =
                writeln!(out, "thitl_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
            let _ = writeln!(out, "thitl_http_request_duration_seconds_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(out, "thitl_http_request_duration_seconds_count{{{labels}}} {}", histogram.count);
        }
        let gauges = [
            (
                "thitl_events_appended_total",
                "counter",
                "Events appended through the API since start.",
                self.events_appended.load(Ordering::Relaxed),
            ),
            ("thitl_store_head_position", "gauge", "The event store's last global position.", head),
            ("thitl_projection_position", "gauge", "The position the read models reflect.", projected),
            (
                "thitl_projection_lag_events",
                "gauge",
                "Events recorded but not yet in the read models.",
                head.saturating_sub(projected),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_lag() {
        let metrics = Metrics::default();
        metrics.record_request("GET", "/v1/rounds/{id}/next", 200, Duration::from_millis(3));
        metrics.record_request("GET", "/v1/rounds/{id}/next", 200, Duration::from_millis(30));
        metrics.record_appended(4);
        let text = metrics.render(10, 7);
        assert!(
            text.contains("thitl_http_requests_total{method=\"GET\",route=\"/v1/rounds/{id}/next\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("thitl_events_appended_total 4"));
        assert!(text.contains("thitl_projection_lag_events 3"));
    }
}
