//! The worker's own `git://` transport, registered with libgit2 in place of its built-in one.
//!
//! libgit2 opens a `git://` connection as a plain socket: Nagle's algorithm on and acknowledgements left to the
//! kernel, which delays them (40 ms on Linux) while it has nothing to send. `git daemon`'s `upload-pack` writes its
//! answers in several small pieces, and after a shallow fetch's `shallow` lines the next piece waits in the
//! server's kernel for the acknowledgement the client's kernel is holding back: two such waits cost a fetch of one
//! new commit about 80 ms, more than the rest of the fetch (the `git` command line waits the same). This transport
//! carries the same bytes over a socket that sends at once (`TCP_NODELAY`) and acknowledges at once (`TCP_QUICKACK`,
//! set again before every read because the kernel clears it), with the connect and read timeouts libgit2 would
//! use. Everything above the bytes (the smart protocol, negotiation, shallow fetches, the pack) stays libgit2's.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

/// The port `git daemon` listens on unless the URL names another.
const DEFAULT_PORT: u16 = 9418;

/// Connect and read timeout, in milliseconds (set with the worker's git timeout).
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(300_000);

/// Sets the connect and read timeout of every later `git://` connection.
pub fn set_timeout(timeout: Duration) {
    TIMEOUT_MS.store(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
}

/// Registers the transport for `git://` URLs, once per process; later calls do nothing.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering changes libgit2's global list of transports, which must not race with a transport
        // being looked up. `Once` makes it a single write, and every place in the worker that opens a remote calls
        // this first, so no remote of ours is being opened while it runs.
        #[allow(unsafe_code)]
        let registered =
            unsafe { git2::transport::register("git", |remote| Transport::smart(remote, false, GitProtocol)) };
        if let Err(err) = registered {
            tracing::warn!(error = %err, "could not register the git:// transport; libgit2's own is used");
        }
    });
}

/// The subtransport: one TCP connection per remote operation (the protocol is stateful, so libgit2 asks for a
/// stream once, for the ref advertisement, and goes on with it for the negotiation and the pack).
struct GitProtocol;

impl SmartSubtransport for GitProtocol {
    fn action(&self, url: &str, action: Service) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let program = match action {
            Service::UploadPackLs | Service::UploadPack => "git-upload-pack",
            Service::ReceivePackLs | Service::ReceivePack => "git-receive-pack",
        };
        let target = Target::parse(url).map_err(|message| net_error(&message))?;
        let timeout = Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed));
        let mut connection = Connection::open(&target, timeout)?;
        connection.write_all(&target.request(program)).map_err(|e| net_error(&format!("{}: {e}", target.host)))?;
        Ok(Box::new(connection))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

fn net_error(message: &str) -> git2::Error {
    git2::Error::new(git2::ErrorCode::GenericError, git2::ErrorClass::Net, message)
}

/// Where a `git://` URL points, and the path to ask the daemon for.
#[derive(Debug, PartialEq)]
struct Target {
    /// Host and port as the URL writes them (`host`, `host:port`, `[v6]:port`): the daemon's `host=`.
    authority: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("git://").ok_or_else(|| format!("not a git:// URL: {url}"))?;
        let slash = rest.find('/').ok_or_else(|| format!("malformed URL: {url} names no repository path"))?;
        let (authority, path) = rest.split_at(slash);
        // `git://host/~user/repo` asks for a path under a user's home, written without the leading slash.
        let path = if path.starts_with("/~") { &path[1..] } else { path };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| format!("malformed URL: {url}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(port) => port.parse().map_err(|_| format!("malformed URL: {url} has an invalid port"))?,
        };
        if host.is_empty() {
            return Err(format!("malformed URL: {url} names no host"));
        }
        Ok(Self { authority: authority.to_owned(), host: host.to_owned(), port, path: path.to_owned() })
    }

    /// The request that opens the connection: a pkt-line naming the program, the path and the host.
    fn request(&self, program: &str) -> Vec<u8> {
        let body = format!("{program} {}\0host={}\0", self.path, self.authority);
        let mut line = format!("{:04x}", body.len() + 4).into_bytes();
        line.extend_from_slice(body.as_bytes());
        line
    }
}

/// An open connection to the daemon.
struct Connection {
    stream: TcpStream,
}

impl Connection {
    fn open(target: &Target, timeout: Duration) -> Result<Self, git2::Error> {
        let failed = |err: &io::Error| net_error(&format!("failed to connect to {}: {err}", target.host));
        let addresses = (target.host.as_str(), target.port).to_socket_addrs().map_err(|e| failed(&e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        for address in addresses {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(|e| failed(&e))?;
                    stream.set_read_timeout(Some(timeout)).map_err(|e| failed(&e))?;
                    stream.set_write_timeout(Some(timeout)).map_err(|e| failed(&e))?;
                    return Ok(Self { stream });
                }
                Err(err) => last = err,
            }
        }
        Err(failed(&last))
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Best effort: a socket that refuses the option only acknowledges later.
        #[cfg(target_os = "linux")]
        let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
        self.stream.read(buf).map_err(|err| match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "timed out reading from the git server")
            }
            _ => err,
        })
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_daemon_s_host_port_and_path() {
        let t = Target::parse("git://127.0.0.1:9555/src.git").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 9555, "/src.git"));
        assert_eq!(t.request("git-upload-pack"), b"0031git-upload-pack /src.git\0host=127.0.0.1:9555\0".to_vec());
        let t = Target::parse("git://example.com/~alice/net.git").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("example.com", 9418, "~alice/net.git"));
        let t = Target::parse("git://[::1]:9000/a/b.git").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("::1", 9000, "[::1]:9000"));
        assert!(Target::parse("git://host").unwrap_err().contains("no repository path"));
        assert!(Target::parse("git://host:port/x").unwrap_err().contains("invalid port"));
        assert!(Target::parse("git:///x").unwrap_err().contains("no host"));
    }
}
