//! # ledger-load
//!
//! Load for the ledger, over the public NATS protocol only. Sets up accounts (placed by
//! the ring the cluster reports in `admin.topology`, so that single-shard pairs are
//! single-shard), funds them, then drives transfers closed loop (N clients, each sending
//! its next request when the last is answered) or open loop (Poisson arrivals at a target
//! rate; latency counted from the scheduled arrival, so queueing is not hidden). Warm-up
//! is excluded from the results, which go to a JSON file and an SVG plot, and with
//! `--trace` every measured answer (when it was sent, its latency) to a CSV file. With
//! `--server-timing` each request asks the ledger how long it held it (the
//! `Ledger-Timing` header of docs/PROTOCOL.md, "Server timing"), and each phase also reports that
//! time and the rest of the latency (NATS, this process) apart. Pointed at `ledger-echo`
//! (`ledger_load::echo`), whose topology says so, it measures the message path alone and
//! says in its results that nothing was posted.

mod report;
mod workload;

use anyhow::{Context, bail};
// The hot paths allocate per request; mimalloc spends a fraction of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use ledger_core::ring::{HashRing, RingParams, ShardId};
use ledger_protocol::admin::Topology;
use ledger_protocol::headers;
use ledger_protocol::request::{CreateAccountRequest, EntryRequest, PostRequest};
use report::{Latency, Phase};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;
use workload::{Population, Rng, Shape};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Closed,
    Open,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadKind {
    Uniform,
    Hot,
    Zipf,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Keys {
    /// Any key: most keys' home shard is not the accounts' shard (claim, then post).
    Random,
    /// Keys whose home is the accounts' shard: one database transaction per post.
    Home,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "ledger-load", about = "Drive load through the ledger's public NATS protocol")]
struct Args {
    #[arg(long, env = "LEDGER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Tenant to load (a fresh random one by default).
    #[arg(long)]
    tenant: Option<Uuid>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Accounts already exist and are funded (same --tenant and --accounts as before).
    #[arg(long)]
    skip_setup: bool,
    /// Only create and fund the accounts.
    #[arg(long)]
    setup_only: bool,
    #[arg(long, value_enum, default_value = "closed")]
    mode: Mode,
    /// Closed loop: clients; open loop: most requests in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Open loop: arrivals per second; a comma list runs one phase per rate.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    #[arg(long, default_value_t = 20.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 5.0)]
    warmup_s: f64,
    #[arg(long, value_enum, default_value = "uniform")]
    workload: WorkloadKind,
    #[arg(long, default_value_t = 10)]
    hot_accounts: usize,
    #[arg(long, default_value_t = 0.9)]
    hot_share: f64,
    #[arg(long, default_value_t = 1.1)]
    zipf_s: f64,
    /// Share of transfers whose two accounts live on different shards.
    #[arg(long, default_value_t = 0.0)]
    cross_shard_share: f64,
    #[arg(long, value_enum, default_value = "random")]
    keys: Keys,
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Name of this run in the results.
    #[arg(long, default_value = "run")]
    name: String,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Also write every measured answer to this CSV file (phase, microseconds from the start
    /// of the measured window to the request's sending or scheduled arrival, latency in
    /// microseconds), to line slow answers up with what the host was doing at the time.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Ask the ledger, on every request, how long it held it, and report that time and
    /// the rest of each answer's latency apart.
    #[arg(long)]
    server_timing: bool,
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn shape(&self) -> Shape {
        match self.workload {
            WorkloadKind::Uniform => Shape::Uniform,
            WorkloadKind::Hot => Shape::Hot { accounts: self.hot_accounts, share: self.hot_share },
            WorkloadKind::Zipf => Shape::Zipf { s: self.zipf_s },
        }
    }
}

struct Target {
    client: async_nats::Client,
    tenant: Uuid,
    ring: HashRing,
    timeout: Duration,
    server_timing: bool,
    /// The topology came from `ledger-echo` (`ledger_load::echo`): answers, nothing posted.
    diagnostic_echo: bool,
}

/// A request's answer: refused with a code or posted, and the microseconds the ledger
/// held it when `--server-timing` asked.
struct Answer {
    refused: Option<String>,
    server_us: Option<u64>,
}

impl Target {
    fn subject(&self, operation: &str) -> String {
        ledger_protocol::subject::tenant_subject(self.tenant, operation)
    }

    /// Sends one request; `Err` when no answer came.
    async fn request(&self, subject: String, body: Vec<u8>) -> anyhow::Result<Answer> {
        let sending = async {
            if self.server_timing {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(headers::TIMING_REQUEST, "1");
                self.client.request_with_headers(subject, headers, body.into()).await
            } else {
                self.client.request(subject, body.into()).await
            }
        };
        let reply = tokio::time::timeout(self.timeout, sending).await??;
        let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
        Ok(Answer {
            refused: header("Nats-Service-Error").map(str::to_owned),
            server_us: header(headers::SERVER_MICROS).and_then(|v| v.parse().ok()),
        })
    }
}

async fn connect(args: &Args) -> anyhow::Result<Target> {
    let client = async_nats::ConnectOptions::new()
        .name("ledger-load")
        .connect(&args.nats)
        .await
        .with_context(|| format!("connect to {}", args.nats))?;
    let topology = client.request("ledger.v1.admin.topology", "{}".into()).await.context("ask the cluster's topology")?;
    let topology: Topology = serde_json::from_slice(&topology.payload).context("the topology is not in the protocol's form")?;
    let shards: Vec<ShardId> = topology.shards.iter().map(|s| s.shard_id).collect();
    let ring = HashRing::new(&shards, RingParams { virtual_nodes_per_shard: topology.ring.virtual_nodes_per_shard });
    Ok(Target {
        client,
        tenant: args.tenant.unwrap_or_else(Uuid::new_v4),
        ring,
        timeout: Duration::from_millis(args.request_timeout_ms),
        server_timing: args.server_timing,
        diagnostic_echo: topology.diagnostic_echo,
    })
}

fn transfer_body(key: &str, debit: &str, credit: &str, amount: u64) -> Vec<u8> {
    let entry = |code: &str, side: &str| EntryRequest {
        account_code: Some(code.to_owned()),
        side: side.to_owned(),
        amount_minor: amount as i64,
        currency: "USD".to_owned(),
        ..Default::default()
    };
    let request = PostRequest {
        idempotency_key: key.to_owned(),
        tx_type: "LOAD".to_owned(),
        actor: "ledger-load".to_owned(),
        entries: vec![entry(debit, "DEBIT"), entry(credit, "CREDIT")],
        ..Default::default()
    };
    serde_json::to_vec(&request).expect("requests serialize")
}

/// Runs `work` over `items` with `concurrency` requests in flight; fails on any refusal.
async fn for_each_request(
    target: &Target,
    label: &str,
    requests: Vec<(String, Vec<u8>)>,
    concurrency: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    let bar = progress(requests.len() as u64, label, quiet);
    let mut stream = futures::stream::iter(requests)
        .map(|(subject, body)| async move { target.request(subject, body).await })
        .buffer_unordered(concurrency);
    while let Some(result) = stream.next().await {
        if let Some(code) = result?.refused {
            bail!("{label}: refused with {code}");
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn progress(length: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

/// Creates the population's accounts and one source account per shard, and funds them.
async fn setup(target: &Target, population: &Population, args: &Args) -> anyhow::Result<()> {
    let create = |code: &str, allow_negative: bool| {
        let request = CreateAccountRequest {
            code: code.to_owned(),
            account_type: "LIABILITY".to_owned(),
            currency: "USD".to_owned(),
            allow_negative,
            metadata: None,
        };
        (target.subject("accounts.create"), serde_json::to_vec(&request).expect("requests serialize"))
    };
    let mut sources = BTreeMap::new();
    for shard in target.ring.shards() {
        let code = (0..)
            .map(|i| format!("load:source:{shard}:{i}"))
            .find(|c| target.ring.shard_for_account(ledger_core::ids::account_id(target.tenant, c)) == *shard)
            .expect("a code for every shard");
        sources.insert(*shard, code);
    }
    let mut creates: Vec<_> = sources.values().map(|c| create(c, true)).collect();
    creates.extend(population.codes.iter().map(|c| create(c, false)));
    for_each_request(target, "creating accounts", creates, 128, args.quiet).await?;
    let funding = population
        .codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let source = &sources[&population.shard_of[i]];
            let key = workload::key(&target.ring, target.tenant, "fund", i as u64, Some(population.shard_of[i]));
            (target.subject("transactions.post"), transfer_body(&key, source, code, 1_000_000_000_000))
        })
        .collect();
    for_each_request(target, "funding accounts", funding, 128, args.quiet).await
}

/// What every request of a phase adds to.
struct Tally {
    latencies: Mutex<Latencies>,
    ok_per_second: Vec<AtomicU64>,
    max_latency_us_per_second: Vec<AtomicU64>,
    rejected: Mutex<BTreeMap<String, u64>>,
    transport_errors: AtomicU64,
    ok: AtomicU64,
    dropped: AtomicU64,
    /// `(sent, latency)` in microseconds of every posted answer, when `--trace` asks for them.
    answers: Option<std::sync::Mutex<Vec<(u64, u64)>>>,
}

/// Posted answers' latencies; with `--server-timing` also the time the ledger held each,
/// and the rest of its latency. One lock for all three: one per answer.
struct Latencies {
    end_to_end: Histogram<u64>,
    server: Histogram<u64>,
    outside: Histogram<u64>,
}

impl Latencies {
    fn new() -> Latencies {
        let histogram = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds");
        Latencies { end_to_end: histogram(), server: histogram(), outside: histogram() }
    }

    fn record(&mut self, latency_us: u64, server_us: Option<u64>) {
        let _ = self.end_to_end.record(latency_us.max(1));
        if let Some(server_us) = server_us {
            let _ = self.server.record(server_us.max(1));
            let _ = self.outside.record(latency_us.saturating_sub(server_us).max(1));
        }
    }
}

/// The percentiles of a histogram that holds anything.
fn latency_if_any(histogram: &Histogram<u64>) -> Option<Latency> {
    (!histogram.is_empty()).then(|| Latency::of(histogram))
}

impl Tally {
    fn new(seconds: usize, trace: bool) -> Tally {
        Tally {
            latencies: Mutex::new(Latencies::new()),
            ok_per_second: (0..seconds + 2).map(|_| AtomicU64::new(0)).collect(),
            max_latency_us_per_second: (0..seconds + 2).map(|_| AtomicU64::new(0)).collect(),
            rejected: Mutex::new(BTreeMap::new()),
            transport_errors: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            answers: trace.then(|| std::sync::Mutex::new(Vec::new())),
        }
    }

    async fn record(&self, measured_from: Instant, start: Instant, result: anyhow::Result<Answer>) {
        let latency_us = measured_from.elapsed().as_micros() as u64;
        let since_start = measured_from.saturating_duration_since(start);
        let second = since_start.as_secs() as usize;
        match result {
            Ok(Answer { refused: None, server_us }) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = self.ok_per_second.get(second) {
                    slot.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(slot) = self.max_latency_us_per_second.get(second) {
                    slot.fetch_max(latency_us, Ordering::Relaxed);
                }
                self.latencies.lock().await.record(latency_us, server_us);
                if let Some(answers) = &self.answers {
                    answers.lock().expect("not poisoned").push((since_start.as_micros() as u64, latency_us));
                }
            }
            Ok(Answer { refused: Some(code), .. }) => *self.rejected.lock().await.entry(code).or_default() += 1,
            Err(_) => {
                self.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Request {
    subject: String,
    body: Vec<u8>,
}

struct Generator {
    population: Population,
    shape: Shape,
    cross_shard_share: f64,
    keys: Keys,
    run: String,
    seq: AtomicU64,
}

impl Generator {
    fn next(&self, target: &Target, rng: &mut Rng) -> Request {
        let (debit, credit) = self.population.pick(rng, self.shape, self.cross_shard_share);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let home = (self.keys == Keys::Home).then_some(self.population.shard_of[debit]);
        let key = workload::key(&target.ring, target.tenant, &self.run, seq, home);
        let amount = 1 + rng.below(100) as u64;
        let body = transfer_body(&key, &self.population.codes[debit], &self.population.codes[credit], amount);
        Request { subject: target.subject("transactions.post"), body }
    }
}

/// Runs one phase; returns its results and, with `--trace`, every posted answer's
/// `(sent, latency)` in microseconds.
async fn run_phase(
    target: Arc<Target>,
    generator: Arc<Generator>,
    args: &Args,
    name: String,
    rate: Option<f64>,
) -> (Phase, Vec<(u64, u64)>) {
    let measured = Duration::from_secs_f64(args.duration_s);
    let warmup = Duration::from_secs_f64(args.warmup_s);
    let tally = Arc::new(Tally::new(args.duration_s.ceil() as usize, args.trace.is_some()));
    let bar = progress((args.warmup_s + args.duration_s).ceil() as u64, &name, args.quiet);
    let begin = Instant::now();
    let measured_from_unix_s =
        (std::time::SystemTime::now() + warmup).duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    let start = begin + warmup;
    let end = start + measured;
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_position(begin.elapsed().as_secs());
            }
        })
    };
    match (args.mode, rate) {
        (Mode::Open, Some(rate)) => {
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut rng = Rng::new(args.seed ^ rate.to_bits());
            let mut next_at = Instant::now();
            let mut tasks = futures::stream::FuturesUnordered::new();
            while next_at < end {
                next_at += Duration::from_secs_f64(rng.exponential(rate));
                tokio::time::sleep_until(next_at.into()).await;
                if in_flight.load(Ordering::Relaxed) >= args.concurrency {
                    if next_at >= start {
                        tally.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let request = generator.next(&target, &mut rng);
                let (target, tally, in_flight) = (target.clone(), tally.clone(), in_flight.clone());
                let scheduled = next_at;
                in_flight.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    let result = target.request(request.subject, request.body).await;
                    if scheduled >= start && scheduled < end {
                        tally.record(scheduled, start, result).await;
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                }));
                while let Some(Some(_)) = futures::FutureExt::now_or_never(tasks.next()) {}
            }
            while tasks.next().await.is_some() {}
        }
        _ => {
            let clients = (0..args.concurrency).map(|client| {
                let (target, tally, generator) = (target.clone(), tally.clone(), generator.clone());
                let seed = args.seed ^ (client as u64).wrapping_mul(0x9e37_79b9);
                tokio::spawn(async move {
                    let mut rng = Rng::new(seed);
                    while Instant::now() < end {
                        let request = generator.next(&target, &mut rng);
                        let sent = Instant::now();
                        let result = target.request(request.subject, request.body).await;
                        if sent >= start && sent < end {
                            tally.record(sent, start, result).await;
                        }
                    }
                })
            });
            futures::future::join_all(clients).await;
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let latencies = tally.latencies.lock().await;
    let ok = tally.ok.load(Ordering::Relaxed);
    let answers = tally.answers.as_ref().map(|a| std::mem::take(&mut *a.lock().expect("not poisoned"))).unwrap_or_default();
    let phase = Phase {
        name,
        mode: format!("{:?}", args.mode).to_lowercase(),
        concurrency: Some(args.concurrency),
        offered_per_s: rate,
        accepted_per_s: ok as f64 / args.duration_s,
        seconds: args.duration_s,
        measured_from_unix_s,
        ok,
        rejected: tally.rejected.lock().await.clone(),
        transport_errors: tally.transport_errors.load(Ordering::Relaxed),
        dropped: tally.dropped.load(Ordering::Relaxed),
        latency_us: Latency::of(&latencies.end_to_end),
        server_latency_us: latency_if_any(&latencies.server),
        outside_latency_us: latency_if_any(&latencies.outside),
        ok_per_second: tally
            .ok_per_second
            .iter()
            .take(args.duration_s.ceil() as usize)
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        max_latency_ms_per_second: tally
            .max_latency_us_per_second
            .iter()
            .take(args.duration_s.ceil() as usize)
            .map(|c| c.load(Ordering::Relaxed) as f64 / 1000.0)
            .collect(),
    };
    (phase, answers)
}

fn summary(phase: &Phase, diagnostic_echo: bool) -> String {
    let l = &phase.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let offered = phase.offered_per_s.map_or(String::new(), |r| format!("offered {r:.0}/s, "));
    let refused: u64 = phase.rejected.values().sum();
    let split = match (&phase.server_latency_us, &phase.outside_latency_us) {
        (Some(server), Some(outside)) => format!(
            "; held by {} p50 {:.2} p99 {:.2}, the rest p50 {:.2} p99 {:.2}",
            if diagnostic_echo { "ledger-echo" } else { "the ledger" },
            ms(server.p50),
            ms(server.p99),
            ms(outside.p50),
            ms(outside.p99)
        ),
        _ => String::new(),
    };
    format!(
        "{}: {offered}{} {:.0}/s ({} ok, {} refused {:?}, {} errors, {} dropped); latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}{split}",
        phase.name,
        if diagnostic_echo { "answered by ledger-echo (nothing posted)" } else { "posted" },
        phase.accepted_per_s,
        phase.ok,
        refused,
        phase.rejected,
        phase.transport_errors,
        phase.dropped,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if matches!(args.mode, Mode::Open) && args.rate.is_empty() {
        bail!("--mode open needs --rate (one or more arrivals per second, comma separated)");
    }
    let target = Arc::new(connect(&args).await?);
    let shape = args.shape();
    let population = Population::new(&target.ring, target.tenant, args.accounts, shape);
    let setup_started = Instant::now();
    if !args.skip_setup {
        setup(&target, &population, &args).await?;
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    if args.setup_only {
        println!("set up {} accounts for tenant {} in {setup_s:.1} s", args.accounts, target.tenant);
        return Ok(());
    }
    let generator = Arc::new(Generator {
        population,
        shape,
        cross_shard_share: args.cross_shard_share,
        keys: args.keys,
        run: format!("load-{}", Uuid::new_v4().simple()),
        seq: AtomicU64::new(0),
    });
    let mut phases = Vec::new();
    let mut trace = report::TRACE_HEADER.to_string();
    let rates: Vec<Option<f64>> = match args.mode {
        Mode::Closed => vec![None],
        Mode::Open => args.rate.iter().copied().map(Some).collect(),
    };
    for rate in rates {
        let name = match rate {
            Some(rate) => format!("{}@{rate:.0}/s", args.name),
            None => format!("{}x{}", args.name, args.concurrency),
        };
        let (phase, answers) = run_phase(target.clone(), generator.clone(), &args, name, rate).await;
        println!("{}", summary(&phase, target.diagnostic_echo));
        report::trace_lines(&mut trace, &phase.name, &answers);
        phases.push(phase);
    }
    let result = json!({
        "tenant": target.tenant,
        "shards": target.ring.shards(),
        "diagnostic_echo": target.diagnostic_echo,
        "config": {
            "accounts": args.accounts, "mode": format!("{:?}", args.mode).to_lowercase(), "concurrency": args.concurrency,
            "rates": args.rate, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
            "workload": format!("{:?}", args.workload).to_lowercase(), "hot_accounts": args.hot_accounts,
            "hot_share": args.hot_share, "zipf_s": args.zipf_s, "cross_shard_share": args.cross_shard_share,
            "keys": format!("{:?}", args.keys).to_lowercase(), "seed": args.seed,
        },
        "setup_s": setup_s,
        "phases": phases,
    });
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&phases, &args.name)).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.trace {
        std::fs::write(path, trace).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
