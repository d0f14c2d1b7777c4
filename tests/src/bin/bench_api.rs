//! `make bench`, API part: one `producer serve` process on loopback, loaded by concurrent clients from this
//! process: authenticated `POST /api/v1/repositories/{name}/sync` and signed GitHub push deliveries matching one
//! repository. Every answered request has committed its outbox row (the response comes after the commit).
//! Prints a Markdown table and, with `--write FILE`, replaces the matching section of that file.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gitfleet_infra::settings::DatabaseSettings;
use gitfleet_producer::commands::{self, NewRepo};
use gitfleet_shared::event::RequestedBy;
use gitfleet_tests::write_section;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

const REQUESTS: usize = 5_000;
const WARM_UP: usize = 200;
const CLIENTS: usize = 16;
const SECRET: &str = "bench-secret";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one load measured.
struct Measured {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends `count` requests made by `make` from `CLIENTS` concurrent clients; every one must be answered 202.
async fn load<F>(count: usize, make: Arc<F>) -> Result<Measured>
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let make = make.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = client;
            while n < count {
                let request = make(n);
                let sent = Instant::now();
                let response = request.send().await?;
                let status = response.status();
                let _ = response.bytes().await?;
                latencies.push(sent.elapsed());
                if status != reqwest::StatusCode::ACCEPTED {
                    bail!("request {n} answered {status}");
                }
                n += CLIENTS;
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Measured { per_second: count as f64 / elapsed.as_secs_f64(), p50: at(0.50), p99: at(0.99) })
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::main]
async fn main() -> Result<()> {
    let write = std::env::args().skip_while(|a| a != "--write").nth(1);
    let id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let url =
        std::env::var("GITFLEET_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/gitfleet".into());
    let database = DatabaseSettings { url: url.clone(), schema: format!("bench_api_{id}"), pool_size: 4 };
    let pool = gitfleet_infra::db::connect(&database, Duration::from_secs(20)).await?;
    let remote = "https://git.example/acme/bench-data.git";
    let new = NewRepo { name: "Bench".into(), remote_url: remote.into(), ..NewRepo::default() };
    commands::create(&pool, new, RequestedBy::cli()).await?;
    let token = gitfleet_producer::tokens::create(&pool, "bench", &[gitfleet_producer::tokens::Scope::Write])
        .await?
        .context("token")?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let producer = std::env::current_exe()?.parent().context("bin dir")?.join("producer");
    let server = Server(
        Command::new(&producer)
            .arg("serve")
            .env("GITFLEET_DATABASE_URL", &url)
            .env("GITFLEET_DATABASE_SCHEMA", &database.schema)
            .env("GITFLEET_DATABASE_POOL_SIZE", "16")
            .env("GITFLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("GITFLEET_SECRETS_WEBHOOKS_TOKEN", SECRET)
            .env("GITFLEET_WEBHOOK_RATE", "1000000")
            .env("GITFLEET_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (build it with the perf profile)", producer.display()))?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("producer serve did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sync = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        Arc::new(move |_n: usize| {
            http.post(format!("{base}/api/v1/repositories/Bench/sync"))
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
                .body("{}")
        })
    };
    let push = {
        let (http, base) = (http.clone(), base.clone());
        let run = id.clone();
        Arc::new(move |n: usize| {
            let body = serde_json::to_vec(&serde_json::json!({
                "ref": "refs/heads/main", "after": format!("{:040x}", n + 1), "deleted": false,
                "repository": {"clone_url": remote, "ssh_url": "git@git.example:acme/bench-data.git"},
            }))
            .expect("a JSON value always serializes");
            http.post(format!("{base}/hooks/github"))
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("{run}-{n}"))
                .header("X-Hub-Signature-256", format!("sha256={}", hmac_hex(&body)))
                .header("Content-Type", "application/json")
                .body(body)
        })
    };
    load(WARM_UP, sync.clone()).await?;
    let syncs = load(REQUESTS, sync).await?;
    let pushes = load(REQUESTS, push).await?;
    drop(server);
    let outbox: i64 = pool.get().await?.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0);
    let expected = (1 + WARM_UP + 2 * REQUESTS) as i64;
    if outbox != expected {
        bail!("{outbox} outbox rows, expected {expected}: an answered request did not commit its event");
    }
    pool.get().await?.batch_execute(&format!("DROP SCHEMA {} CASCADE", database.schema)).await?;

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let table = format!(
        "<!-- bench:api -->\nOne `producer serve` process (optimized build) on loopback, {CLIENTS} concurrent clients in \
         another process, {REQUESTS} requests each; every answer came after its event's outbox row was committed \
         ({outbox} rows checked).\n\n| request | per second | p50 | p99 | target |\n|---|---|---|---|---|\n\
         | `POST /api/v1/repositories/{{name}}/sync` (bearer token) | {:.0} | {} | {} | |\n\
         | signed GitHub push delivery (`/hooks/github`) | {:.0} | {} | {} | >= 1,000/s, p99 < 50 ms |\n\
         <!-- /bench:api -->\n",
        syncs.per_second,
        ms(syncs.p50),
        ms(syncs.p99),
        pushes.per_second,
        ms(pushes.p50),
        ms(pushes.p99),
    );
    println!("{table}");
    if let Some(path) = write {
        write_section(&path, "api", "HTTP API and webhooks", &table)?;
    }
    Ok(())
}
