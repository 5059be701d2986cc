//! Results: the JSON file and an SVG plot (latency percentiles against offered load, and
//! throughput over time), drawn by hand to keep the harness free of plotting libraries.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// One measured phase (warm-up excluded).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub mode: String,
    pub concurrency: Option<usize>,
    pub offered_per_s: Option<f64>,
    pub accepted_per_s: f64,
    pub seconds: f64,
    /// Wall-clock start of the measured window (after the warm-up), in seconds since the
    /// Unix epoch: lets host samples taken beside the run be matched to the phase.
    pub measured_from_unix_s: f64,
    pub ok: u64,
    pub rejected: BTreeMap<String, u64>,
    pub transport_errors: u64,
    /// Open loop: arrivals dropped because `in_flight_max` requests were outstanding.
    pub dropped: u64,
    pub latency_us: Latency,
    /// With `--server-timing`: how long the ledger held each posted request
    /// (`Ledger-Server-Micros`), and the rest of its latency (the request's and the
    /// reply's way through NATS, and this process). Each is a distribution of its own:
    /// the two p99s need not add up to the p99 of `latency_us`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_latency_us: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_latency_us: Option<Latency>,
    pub ok_per_second: Vec<u64>,
    /// The slowest answer to a request sent in each second: where the stalls are.
    pub max_latency_ms_per_second: Vec<f64>,
}

/// The header of `--trace` files.
pub const TRACE_HEADER: &str = "phase,sent_us,latency_us\n";

/// Appends one phase's answers to a `--trace` file's text: one line per answer, with
/// the microseconds from the start of the measured window to the request's sending
/// (closed loop) or scheduled arrival (open loop), and its latency in microseconds.
pub fn trace_lines(out: &mut String, phase: &str, answers: &[(u64, u64)]) {
    for (sent_us, latency_us) in answers {
        let _ = writeln!(out, "{phase},{sent_us},{latency_us}");
    }
}

pub fn svg(phases: &[Phase], title: &str) -> String {
    let (width, height) = (900.0, 660.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-size="16">{title}</text>
"#
    );
    // panel 1: latency percentiles against offered (or accepted) load
    let points: Vec<(f64, &Latency)> =
        phases.iter().map(|p| (p.offered_per_s.unwrap_or(p.accepted_per_s), &p.latency_us)).collect();
    type Series = (&'static str, &'static str, fn(&Latency) -> u64);
    let series: [Series; 3] = [("p50", "#1f77b4", |l| l.p50), ("p99", "#d62728", |l| l.p99), ("p99.9", "#9467bd", |l| l.p999)];
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points.iter().map(|p| p.1.p999 as f64 / 1000.0).fold(1.0, f64::max) * 1.1;
    let panel = Panel { left: 70.0, top: 50.0, width: 780.0, height: 230.0, x_max, y_max };
    panel.axes(&mut out, "offered load (transfers/s)", "latency (ms)");
    for (name, color, pick) in series {
        let line: Vec<(f64, f64)> = points.iter().map(|(x, l)| (*x, pick(l) as f64 / 1000.0)).collect();
        panel.polyline(&mut out, &line, color);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
            panel.left + panel.width - 60.0,
            panel.top + 15.0 + 15.0 * series_index(name)
        );
    }
    // panel 2: throughput over time, one line per phase
    let longest = phases.iter().map(|p| p.ok_per_second.len()).max().unwrap_or(1).max(1) as f64;
    let y_max = phases.iter().flat_map(|p| p.ok_per_second.iter()).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let panel = Panel { left: 70.0, top: 350.0, width: 780.0, height: 230.0, x_max: longest, y_max };
    panel.axes(&mut out, "seconds", "posted transfers/s");
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    for (i, phase) in phases.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line: Vec<(f64, f64)> = phase.ok_per_second.iter().enumerate().map(|(s, n)| (s as f64 + 0.5, *n as f64)).collect();
        panel.polyline(&mut out, &line, color);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            80.0 + 150.0 * (i % 5) as f64,
            620.0 + 15.0 * (i / 5) as f64,
            phase.name
        );
    }
    out.push_str("</svg>\n");
    out
}

fn series_index(name: &str) -> f64 {
    match name {
        "p50" => 0.0,
        "p99" => 1.0,
        _ => 2.0,
    }
}

struct Panel {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, value: f64) -> f64 {
        self.left + self.width * value / self.x_max
    }

    fn y(&self, value: f64) -> f64 {
        self.top + self.height - self.height * value / self.y_max
    }

    fn axes(&self, out: &mut String, x_label: &str, y_label: &str) {
        let (l, t, w, h) = (self.left, self.top, self.width, self.height);
        let _ = writeln!(out, r#"<rect x="{l}" y="{t}" width="{w}" height="{h}" fill="none" stroke="black"/>"#);
        for i in 0..=4 {
            let fx = self.x_max * i as f64 / 4.0;
            let fy = self.y_max * i as f64 / 4.0;
            let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, self.x(fx), t + h + 16.0, tick(fx));
            let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, l - 6.0, self.y(fy) + 4.0, tick(fy));
            let _ = writeln!(out, r##"<line x1="{l}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>"##, l + w, self.y(fy), self.y(fy));
        }
        let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#, l + w / 2.0, t + h + 34.0);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" transform="rotate(-90 {} {})" text-anchor="middle">{y_label}</text>"#,
            l - 50.0,
            t + h / 2.0,
            l - 50.0,
            t + h / 2.0
        );
    }

    fn polyline(&self, out: &mut String, points: &[(f64, f64)], color: &str) {
        let coords: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y))).collect();
        let _ = writeln!(out, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#, coords.join(" "));
        for (x, y) in points {
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, self.x(*x), self.y(*y));
        }
    }
}

fn tick(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_follow_the_header_one_answer_per_line() {
        let mut text = TRACE_HEADER.to_string();
        trace_lines(&mut text, "open@100/s", &[(0, 1_500), (10_250, 32_000)]);
        trace_lines(&mut text, "open@200/s", &[]);
        assert_eq!(text, "phase,sent_us,latency_us\nopen@100/s,0,1500\nopen@100/s,10250,32000\n");
    }
}
