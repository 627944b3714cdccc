//! HTTP load with `wrk` (installed with apt when missing) on 1,000 routes, small POSTs spread over
//! all of them: through the provider -> NATS -> a component, next to a plain hyper server that
//! answers in-process, in the same run. Prints requests/s, p50/p99 latency, the ratio and the
//! provider's RSS; asserts nothing.
//!
//! `cargo bench -p sluice-provider-http-inproc --bench http`
//! (`BENCH_SECONDS`, `BENCH_CONNECTIONS` and `BENCH_HTTP_THREADS` change each run's length, the
//! wrk connection counts to run at, comma-separated (default `64,96,128`: a throughput-latency
//! curve), and the provider's `http_threads`.)

use std::convert::Infallible;
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sluice_integration::component::FakeComponent;
use sluice_integration::host::{HostedProvider, Link};
use sluice_integration::servers::{ensure_installed, free_port, temp_dir, NatsServer};

const PROVIDER: &str = "http-ingress";
const ROUTES: usize = 1000;
const BODY: &str = r#"{"sensor":"s-17","value":21.5,"unit":"C"}"#;

/// wrk's figures for one run.
#[derive(Debug, Default)]
struct Figures {
    requests_per_s: f64,
    p50: String,
    p99: String,
    errors: String,
}

fn wrk(url: &str, script: &std::path::Path, seconds: u64, connections: u64) -> Figures {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut figures = Figures::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(rate)) => figures.requests_per_s = rate.parse().unwrap_or(0.0),
            (Some("50%"), Some(p)) => figures.p50 = p.into(),
            (Some("99%"), Some(p)) => figures.p99 = p.into(),
            (Some("Non-2xx"), _) => figures.errors.push_str(line),
            (Some("Socket"), _) => figures.errors.push_str(line),
            _ => {}
        }
    }
    if figures.requests_per_s == 0.0 {
        eprintln!("wrk said:\n{text}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    figures
}

/// A plain hyper server answering every POST in-process, as the provider does once the step said
/// yes: read the body, answer 200 with a small JSON body.
async fn plain_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let answer = format!(r#"{{"accepted":1,"bytes":{}}}"#, body.len());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn fmt_rate(r: f64) -> String {
    let whole = r.round() as u64;
    let s = whole.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_integration::init_tracing();
    ensure_installed(
        "wrk",
        &[
            "sh",
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
        ],
    )?;
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let sweep: Vec<u64> = std::env::var("BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "64,96,128".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let dir = temp_dir("http-bench")?;
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, \"/r/\" .. (n % {ROUTES}) .. \"/reading\")\nend\n"
        ),
    )?;

    let plain_port = plain_server().await;
    let plain_url = format!("http://127.0.0.1:{plain_port}");
    let mut plain = Vec::new();
    for &connections in &sweep {
        wrk(&plain_url, &script, 2, connections);
        plain.push(wrk(&plain_url, &script, seconds, connections));
    }

    let nats = NatsServer::start()?;
    let lattice = nats.connect().await?;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut config = vec![("address", address.clone())];
    if let Ok(threads) = std::env::var("BENCH_HTTP_THREADS") {
        config.push(("http_threads", threads));
    }
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut provider = HostedProvider::start(
        &nats,
        env!("CARGO_BIN_EXE_sluice-provider-http-inproc"),
        PROVIDER,
        &config,
    )
    .await?;
    let mut steps = Vec::with_capacity(ROUTES);
    let mut links = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES {
        let id = format!("step-{i:04}");
        let step = FakeComponent::serve(&lattice, "default", &id).await?;
        step.keep_records(false);
        steps.push(step);
        links.push(Link::source(PROVIDER, &id, "default", &[("path", &format!("/r/{i}"))]));
    }
    provider.put_links(links).await?;
    let url = format!("http://127.0.0.1:{port}");
    let provider_pid = provider.pid().map(|p| p.to_string()).unwrap_or_default();
    println!(
        "wrk -t2 -d{seconds}s at each connection count, POSTs of {} B spread over {ROUTES} routes, one machine (2 shared cores)",
        BODY.len()
    );
    println!(
        "{:>5}  {:>10} {:>9} {:>9}  {:>10} {:>9} {:>9} {:>7}  {:>9} {:>9}",
        "conns", "plain/s", "p50", "p99", "provider/s", "p50", "p99", "ratio", "prov CPU", "comp CPU"
    );
    for (&connections, plain) in sweep.iter().zip(&plain) {
        wrk(&url, &script, 2, connections);
        let cpu_before = (cpu_seconds(&provider_pid), cpu_seconds("self"));
        let through = wrk(&url, &script, seconds, connections);
        let cpu = (
            cpu_seconds(&provider_pid) - cpu_before.0,
            cpu_seconds("self") - cpu_before.1,
        );
        println!(
            "{connections:>5}  {:>10} {:>9} {:>9}  {:>10} {:>9} {:>9} {:>6.2}x  {:>8.1}s {:>8.1}s {}{}",
            fmt_rate(plain.requests_per_s),
            plain.p50,
            plain.p99,
            fmt_rate(through.requests_per_s),
            through.p50,
            through.p99,
            through.requests_per_s / plain.requests_per_s.max(1.0),
            cpu.0,
            cpu.1,
            plain.errors,
            through.errors
        );
    }
    let delivered: usize = steps.iter().map(FakeComponent::accepted_count).sum();
    let rss = provider.rss_kib().unwrap_or(0);
    println!(
        "records accepted by the components in all: {delivered}; provider RSS {:.1} MiB; CPU over each {seconds} s run: the provider's, and the bench process's (1,000 components)",
        rss as f64 / 1024.0
    );
    let status = provider.status().await?;
    let retried: u64 = status.links.iter().map(|l| l.metrics.retried).sum();
    let busy: u64 = status.links.iter().map(|l| l.metrics.busy).sum();
    println!("engine counters: retried {retried}, busy (429) {busy}");
    Ok(())
}
