//! A TCP proxy on loopback that delays every byte by a fixed time in each direction, so a loopback `git daemon`
//! answers as a Git host across a network does (a 50 ms delay each way is a 100 ms round trip). The delay can be
//! changed while it runs (0 for set-up, the real figure for the measured part). Bounded: at most `MAX_CONNECTIONS`
//! at once (more wait to be accepted), and at most `IN_FLIGHT` chunks delayed per direction of a connection, so a
//! fast sender is held back rather than buffered without end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const MAX_CONNECTIONS: usize = 512;
const IN_FLIGHT: usize = 64;

/// The proxy: its port, and the one-way delay in microseconds.
pub struct LatencyProxy {
    pub port: u16,
    delay_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    /// Listens on a free loopback port and forwards to `upstream` (a loopback port).
    pub async fn start(upstream: u16, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let delay_us = Arc::new(AtomicU64::new(u64::try_from(one_way.as_micros()).unwrap_or(u64::MAX)));
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let delay = delay_us.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let Ok((client, _)) = listener.accept().await else { continue };
                let delay = delay.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(pipe(client_read, server_write, delay.clone()));
                    let down = tokio::spawn(pipe(server_read, client_write, delay));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self { port, delay_us, task })
    }

    pub fn set_delay(&self, one_way: Duration) {
        self.delay_us.store(u64::try_from(one_way.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order; the write side is shut down
/// when the read side ends.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}
