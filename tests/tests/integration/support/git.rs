//! Real git remotes for the tests: bare repositories written with the git command line, served over file://,
//! `git daemon` (git://), `git http-backend` behind lighttpd (http(s)://) and OpenSSH's sshd (ssh://).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use super::{free_port, wait_port};

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Nautobot Automation")
        .env("GIT_AUTHOR_EMAIL", "nautobot@nautobot.com")
        .env("GIT_COMMITTER_NAME", "Nautobot Automation")
        .env("GIT_COMMITTER_EMAIL", "nautobot@nautobot.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    if !out.status.success() {
        bail!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A bare repository (the remote) and a work tree that pushes to it.
pub struct Remote {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Remote {
    /// An empty bare repository named `<name>.git` under `dir`, with a work tree beside it.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let bare = dir.join(format!("{name}.git"));
        let work = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work)?;
        git(dir, &["init", "-q", "--bare", "-b", "main", bare.to_str().context("path")?])?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["remote", "add", "origin", bare.to_str().context("path")?])?;
        Ok(Self { bare, work })
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Writes the files, commits on the current branch, pushes it, and returns the commit id.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> Result<String> {
        for (path, content) in files {
            let path = self.work.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, content)?;
        }
        git(&self.work, &["add", "-A"])?;
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message])?;
        let branch = git(&self.work, &["rev-parse", "--abbrev-ref", "HEAD"])?;
        git(&self.work, &["push", "-q", "origin", &branch])?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// An annotated tag on HEAD, pushed.
    pub fn tag(&self, tag: &str) -> Result<()> {
        git(&self.work, &["tag", "-a", tag, "-m", tag])?;
        git(&self.work, &["push", "-q", "origin", tag])?;
        Ok(())
    }
}

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` serving every repository under `base` on a loopback port.
pub async fn git_daemon(base: &Path) -> Result<Server> {
    git_daemon_on(base, free_port()).await
}

/// The same on a given port.
pub async fn git_daemon_on(base: &Path, port: u16) -> Result<Server> {
    let child = Command::new(gitfleet_tests::git_daemon_program()?)
        .args([
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--export-all",
            "--reuseaddr",
            &format!("--base-path={}", base.display()),
            &base.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting git daemon")?;
    let server = Server { child, port };
    wait_port(port).await?;
    Ok(server)
}

/// lighttpd running `git http-backend` as CGI for every repository under `base`, at `http://127.0.0.1:PORT/git/`.
pub async fn git_http(base: &Path, state: &Path) -> Result<Server> {
    git_http_with_auth(base, state, &[]).await
}

/// The same, behind HTTP basic authentication for these `(user, password)` pairs when there are any.
pub async fn git_http_with_auth(base: &Path, state: &Path, users: &[(&str, &str)]) -> Result<Server> {
    git_http_server(base, state, users, None).await
}

/// A self-signed certificate for 127.0.0.1 (also its own CA): `(cert.pem, key.pem)` under `dir`.
pub fn self_signed(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl (make test-deps)")?;
    if !status.success() {
        bail!("openssl req failed");
    }
    Ok((cert, key))
}

/// lighttpd serving `git http-backend`, over TLS with `tls = (cert, key)` when given, at `PORT/git/`.
pub async fn git_http_server(
    base: &Path,
    state: &Path,
    users: &[(&str, &str)],
    tls: Option<(&Path, &Path)>,
) -> Result<Server> {
    let lighttpd = ["/usr/sbin/lighttpd", "/usr/local/sbin/lighttpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("lighttpd is not installed (make test-deps)")?;
    let exec_path = git(base, &["--exec-path"])?;
    let port = free_port();
    std::fs::create_dir_all(state)?;
    let conf = state.join("lighttpd.conf");
    let auth_conf = match users {
        [] => String::new(),
        users => {
            let lines: String = users.iter().map(|(user, password)| format!("{user}:{password}\n")).collect();
            std::fs::write(state.join("users"), lines)?;
            format!(
                "auth.backend = \"plain\"\nauth.backend.plain.userfile = \"{}/users\"\n\
                 auth.require = (\"/git\" => (\"method\" => \"basic\", \"realm\" => \"git\", \"require\" => \"valid-user\"))\n",
                state.display()
            )
        }
    };
    let tls_conf = match tls {
        Some((cert, key)) => format!(
            "server.modules += (\"mod_openssl\")\nssl.engine = \"enable\"\nssl.pemfile = \"{}\"\nssl.privkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    std::fs::write(
        &conf,
        format!(
            r#"server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv")
{auth_conf}{tls_conf}
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{state}"
server.errorlog = "{state}/error.log"
server.pid-file = "{state}/lighttpd.pid"
alias.url = ("/git" => "{exec_path}/git-http-backend")
$HTTP["url"] =~ "^/git" {{
    cgi.assign = ("" => "")
    setenv.add-environment = (
        "GIT_PROJECT_ROOT" => "{base}",
        "GIT_HTTP_EXPORT_ALL" => "1",
        "GIT_CONFIG_COUNT" => "1",
        "GIT_CONFIG_KEY_0" => "safe.directory",
        "GIT_CONFIG_VALUE_0" => "*"
    )
}}
"#,
            state = state.display(),
            base = base.display(),
        ),
    )?;
    let child = Command::new(lighttpd)
        .args(["-D", "-f", &conf.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting lighttpd")?;
    let server = Server { child, port };
    wait_port(port).await?;
    Ok(server)
}

/// A key pair made with `ssh-keygen`: `(private key file, "type base64" public key)`.
pub fn ssh_keygen(path: &Path, kind: &str, passphrase: &str) -> Result<(PathBuf, String)> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "gitfleet-test", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .context("running ssh-keygen (make test-deps)")?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    let public = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Ok((path.to_owned(), public))
}

/// OpenSSH's sshd on a loopback port, serving git over SSH for the keys in `authorized` (as the user running the
/// tests, whose login shell runs `git-upload-pack`). Returns the server and its host key's known_hosts line.
pub async fn ssh_server(state: &Path, authorized: &[&str]) -> Result<(Server, String)> {
    let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("sshd is not installed (make test-deps)")?;
    std::fs::create_dir_all(state)?;
    // sshd's privilege separation directory (created by the package's service, which never runs here).
    std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
    let (_, host_public) = ssh_keygen(&state.join("host_ed25519"), "ed25519", "")?;
    std::fs::write(state.join("authorized_keys"), authorized.join("\n") + "\n")?;
    let port = free_port();
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".to_owned());
    let conf = state.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {s}/host_ed25519\nAuthorizedKeysFile {s}/authorized_keys\n\
             PidFile {s}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             AllowUsers {user}\nLogLevel ERROR\n",
            s = state.display()
        ),
    )?;
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.join("sshd.log"))?)
        .spawn()
        .context("starting sshd")?;
    let server = Server { child, port };
    wait_port(port).await?;
    Ok((server, format!("[127.0.0.1]:{port} {host_public}")))
}

/// Nautobot's Git test repository as its test helper builds it: commit "Empty commit" tagged `empty-repo`, then one
/// commit per folder of `fixtures/nautobot` (our own rewrite of Nautobot's fixture data), each tree replacing the
/// previous one, tagged `valid-files` and `invalid-files`. `main` ends at the invalid commit.
pub fn nautobot_fixture(dir: &Path) -> Result<Remote> {
    let remote = Remote::new(dir, "nautobot")?;
    remote.commit("Empty commit", &[])?;
    remote.tag("empty-repo")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (folder, tag) in [("01-valid-files", "valid-files"), ("02-invalid-files", "invalid-files")] {
        git(&remote.work, &["rm", "-rq", "--ignore-unmatch", "."])?;
        copy_tree(&manifest.join("fixtures/nautobot").join(folder), &remote.work)?;
        remote.commit(folder, &[])?;
        remote.tag(tag)?;
    }
    Ok(remote)
}

/// A remote whose one commit holds the files of `from` (a folder of fixtures).
pub fn remote_of_folder(dir: &Path, name: &str, from: &Path) -> Result<(Remote, String)> {
    let remote = Remote::new(dir, name)?;
    copy_tree(from, &remote.work)?;
    let head = remote.commit("fixture", &[])?;
    Ok((remote, head))
}

pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A loopback TCP proxy to `upstream` that holds each new connection for `delay` (read per connection, in
/// milliseconds) before passing it on: a slow git server. Stops when the handle is aborted.
pub async fn delay_proxy(
    upstream: u16,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let handle = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let wait = std::time::Duration::from_millis(delay.load(std::sync::atomic::Ordering::SeqCst));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((port, handle))
}

/// A loopback TCP proxy to `upstream` that can be switched off: while the sender holds `true`, new connections are
/// dropped at once and open ones are cut. A storage or git server that went away and came back.
pub async fn switch_proxy(
    upstream: u16,
) -> Result<(u16, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (down, watch) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if *watch.borrow() {
                drop(inbound);
                continue;
            }
            let mut watch = watch.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|down| *down) => {}
                    }
                }
            });
        }
    });
    Ok((port, down, handle))
}

/// A loopback HTTP/1.1 proxy to `upstream` that records each request it passes on as `"METHOD /path"` (bodies by
/// Content-Length or chunked encoding), so a test can count what a client really sent to a server.
pub async fn counting_http_proxy(
    upstream: u16,
) -> Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let handle = tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let (client_read, mut client_write) = inbound.into_split();
                let (mut server_read, mut server_write) = outbound.into_split();
                let answers = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut reader = BufReader::new(client_read);
                // One request per turn: request line, headers, then the body as the headers describe it.
                let requests = async {
                    loop {
                        let mut head = String::new();
                        let mut line = String::new();
                        if reader.read_line(&mut line).await? == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        let request = line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                        head.push_str(&line);
                        let (mut length, mut chunked) = (0usize, false);
                        loop {
                            line.clear();
                            reader.read_line(&mut line).await?;
                            head.push_str(&line);
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                                chunked = true;
                            }
                            if line == "\r\n" || line.is_empty() {
                                break;
                            }
                        }
                        server_write.write_all(head.as_bytes()).await?;
                        if chunked {
                            loop {
                                line.clear();
                                reader.read_line(&mut line).await?;
                                server_write.write_all(line.as_bytes()).await?;
                                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                                    .unwrap_or(0);
                                if size == 0 {
                                    // Trailers up to the empty line.
                                    loop {
                                        line.clear();
                                        reader.read_line(&mut line).await?;
                                        server_write.write_all(line.as_bytes()).await?;
                                        if line == "\r\n" || line.is_empty() {
                                            break;
                                        }
                                    }
                                    break;
                                }
                                let mut chunk = vec![0; size + 2];
                                reader.read_exact(&mut chunk).await?;
                                server_write.write_all(&chunk).await?;
                            }
                        } else if length > 0 {
                            let mut body = vec![0; length];
                            reader.read_exact(&mut body).await?;
                            server_write.write_all(&body).await?;
                        }
                        if let Ok(mut log) = log.lock() {
                            log.push(request);
                        }
                    }
                };
                let _ = requests.await;
                answers.abort();
            });
        }
    });
    Ok((port, seen, handle))
}
