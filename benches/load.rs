//! `make bench` (load): our own load generator (hyper + rustls, through
//! reqwest) against the webhook over TLS, in this process: N kept-alive
//! HTTP/1.1 connections sending the 16 KB calico-node review, which is held
//! with a patch (the most work the webhook does).
//!
//! - fixed rate: `LOAD_RATE` requests/s (1,000) for `LOAD_SECONDS` (60; 10
//!   with `BENCH_QUICK=1`), spread over the connections; each latency is
//!   measured from the moment its request was due, so a stall counts for
//!   every request it delays (no coordinated omission). Errors, p50, p99,
//!   p99.9 and the resident memory each second (start, end, max) are
//!   reported. The RSS is the process's: server and load generator together.
//! - closed loop: the same connections back to back for 10 s (3 s quick),
//!   against the webhook and, as the baseline, a fixed-answer route on the
//!   same server: requests/s of each and their ratio.

mod common;
use common::Stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_switch_webhook::cluster::{Cluster, Settings};
use overlay_switch_webhook::server::AppState;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One request; Ok when it was answered 200 with a held review.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    want_patch: bool,
) -> Result<(), String> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if want_patch && !bytes.windows(9).any(|w| w == b"\"patch\":\"") {
        return Err("answer without the hold patch".into());
    }
    Ok(())
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let connections: usize = env_or("LOAD_CONNECTIONS", 8);
    let rate: u64 = env_or("LOAD_RATE", 1000);
    let seconds: u64 = env_or("LOAD_SECONDS", if quick { 10 } else { 60 });
    let body = Arc::new(common::review_body());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cluster = Cluster::new(Settings::default());
        common::feed_blocked_cluster(&cluster);
        let (port, ca) = common::tls_server(AppState::new(cluster, None)).await;
        let mutate = format!("https://127.0.0.1:{port}/mutate");
        let fixed = format!("https://127.0.0.1:{port}/fixed");
        // One client (and so one kept-alive connection) per worker.
        let clients: Vec<reqwest::Client> =
            (0..connections).map(|_| common::client(&ca, 1)).collect();

        // --- Fixed rate. ---
        println!(
            "load: {} KB review, held with a patch; {connections} HTTP/1.1 connections; {rate} req/s for {seconds} s",
            body.len() / 1024
        );
        let rss_start = rss_kib();
        let sampler = tokio::spawn(async move {
            let mut samples = vec![];
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for _ in 0..=2 * seconds {
                tick.tick().await;
                samples.push(rss_kib());
            }
            samples
        });
        let fixed_rate = |url: String, want_patch: bool| {
            let clients = clients.clone();
            let body = body.clone();
            async move {
                let start = tokio::time::Instant::now() + Duration::from_millis(100);
                let total = rate * seconds;
                let per_worker = total / connections as u64;
                let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
                let mut tasks = vec![];
                for (w, client) in clients.into_iter().enumerate() {
                    let (url, body) = (url.clone(), body.clone());
                    let offset = Duration::from_secs_f64(w as f64 / rate as f64);
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(per_worker as usize);
                        let mut late = Vec::with_capacity(per_worker as usize);
                        let mut errors = vec![];
                        for k in 0..per_worker {
                            let due = start + offset + interval * k as u32;
                            tokio::time::sleep_until(due).await;
                            // tokio's timer wakes up to 1 ms late: the
                            // latency counts from the send, the lateness
                            // is reported on its own (a worker waits 8 ms
                            // between sends, so a slow answer shows as
                            // latency, not as a late send).
                            let sent = tokio::time::Instant::now();
                            late.push(sent - due);
                            let r = post(&client, &url, &body, want_patch).await;
                            lat.push(sent.elapsed());
                            if let Err(e) = r {
                                errors.push(e);
                            }
                        }
                        (lat, late, errors)
                    }));
                }
                let (mut lat, mut late, mut errors) = (vec![], vec![], vec![]);
                for t in tasks {
                    let (l, d, e) = t.await.unwrap();
                    lat.extend(l);
                    late.extend(d);
                    errors.extend(e);
                }
                let took = start.elapsed();
                lat.sort();
                late.sort();
                (lat, late, errors, took)
            }
        };
        let (base_lat, _, base_errors, _) = fixed_rate(fixed.clone(), false).await;
        let (lat, late, errors, took) = fixed_rate(mutate.clone(), true).await;
        let samples = sampler.await.unwrap();
        let (p50, p99, p999) = (
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
        );
        let fixed_errors = errors.len();
        println!(
            "  fixed rate: {} requests in {:.1?} ({:.0} req/s), {} errors{}",
            lat.len(),
            took,
            lat.len() as f64 / took.as_secs_f64(),
            errors.len(),
            errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );

        // --- Closed loop: held reviews vs a fixed answer. ---
        let closed = Duration::from_secs(if quick { 3 } else { 10 });
        // Rounds, alternating: requests/s of the fixed answer and of the
        // held review, and errors.
        let (mut fixed_rates, mut held_rates, mut ratios) = (vec![], vec![], vec![]);
        let mut closed_errors = [0u64, 0u64];
        for _ in 0..if quick { 1 } else { 3 } {
            let mut rates = vec![];
            for (name, url, want_patch) in [("fixed answer", &fixed, false), ("webhook (held)", &mutate, true)] {
                let deadline = Instant::now() + closed;
                let mut tasks = vec![];
                for client in &clients {
                    let (client, url, body) = (client.clone(), url.clone(), body.clone());
                    tasks.push(tokio::spawn(async move {
                        let (mut n, mut e) = (0u64, 0u64);
                        while Instant::now() < deadline {
                            match post(&client, &url, &body, want_patch).await {
                                Ok(()) => n += 1,
                                Err(_) => e += 1,
                            }
                        }
                        (n, e)
                    }));
                }
                let (mut n, mut e) = (0, 0);
                for t in tasks {
                    let (a, b) = t.await.unwrap();
                    n += a;
                    e += b;
                }
                let per_s = n as f64 / closed.as_secs_f64();
                println!("  closed loop, {name}: {per_s:.0} req/s, {e} errors");
                rates.push(per_s);
                closed_errors[usize::from(want_patch)] += e;
            }
            println!(
                "  ratio webhook/fixed answer: {:.2}",
                rates[1] / rates[0].max(1.0)
            );
            fixed_rates.push(rates[0]);
            held_rates.push(rates[1]);
            ratios.push(rates[1] / rates[0].max(1.0));
        }
        let (fixed_rate, held_rate, ratio) =
            (Stats::of(fixed_rates), Stats::of(held_rates), Stats::of(ratios));
        let md = format!(
            "## Sustained load over TLS\n\n`cargo bench --bench load`. The held review ({} KB) POSTed to our \
             server's TLS stack by our load generator (hyper + rustls, in the same process, so it shares \
             the 2 cores), {connections} keep-alive HTTP/1.1 connections.\n\n\
             | Figure | Ours | Baseline (same server) | Ratio | Target | |\n|---|---|---|---|---|---|\n\
             | closed loop, {} s each, min / median / max of {} rounds | {} held reviews/s ({} errors) | fixed answer {}/s | {}x | >= 3,000/s, 0 errors | {} |\n\
             | fixed {rate} req/s for {seconds} s: p50 / p99 / p99.9 | {p50:.2?} / {p99:.2?} / {p999:.2?} ({fixed_errors} errors) | fixed answer {:.2?} / {:.2?} / {:.2?} ({} errors) | p99 {:.2}x | p99 < 2 ms, 0 errors | {} |\n\
             | the generator's sends, late by (p50 / p99 / max; tokio's 1 ms timer) | {:.2?} / {:.2?} / {:.2?} | | | | |\n\
             | RSS (server + generator) start / end / max | {} / {} / {} MiB | | | | |\n",
            body.len() / 1024,
            closed.as_secs(),
            if quick { 1 } else { 3 },
            held_rate.show(0),
            closed_errors[1],
            fixed_rate.show(0),
            ratio.show(2),
            common::verdict(held_rate.min >= 3000.0 && closed_errors[1] == 0),
            percentile(&base_lat, 0.5),
            percentile(&base_lat, 0.99),
            percentile(&base_lat, 0.999),
            base_errors.len(),
            p99.as_secs_f64() / percentile(&base_lat, 0.99).as_secs_f64(),
            common::verdict(p99 < Duration::from_millis(2) && fixed_errors == 0),
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            late.last().copied().unwrap_or_default(),
            rss_start / 1024,
            samples.last().copied().unwrap_or(0) / 1024,
            samples.iter().max().copied().unwrap_or(0) / 1024,
        );
        common::report("30-load", &md);
    });
}
