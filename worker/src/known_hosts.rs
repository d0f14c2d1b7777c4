//! SSH host-key checking against an OpenSSH `known_hosts` file, called from git2's certificate callback.
//!
//! libgit2 hands over the server's key blob (SSH wire format, the same bytes a known_hosts line carries in base64)
//! and the host name; the port comes from the remote URL, since OpenSSH writes `[host]:port` for ports other than 22.
//! Plain and hashed (`|1|salt|hash`) host fields, comma-separated patterns with `*`/`?` wildcards and `!` negation,
//! and `@revoked` lines are understood; `@cert-authority` lines are skipped (no certificate support).

use std::path::{Path, PathBuf};

/// How SSH servers' host keys are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Only keys listed for the host in this file are accepted (OpenSSH's `StrictHostKeyChecking yes`).
    KnownHosts(PathBuf),
    /// Any host key is accepted (`GITFLEET_SSH_STRICT_HOST_KEY_CHECKING=no`): an explicit, logged opt-out.
    AcceptAny,
}

/// Why a host key was refused. The message says what to do.
pub fn check(policy: &HostKeyPolicy, host: &str, port: u16, key: &[u8]) -> Result<(), String> {
    let path = match policy {
        HostKeyPolicy::AcceptAny => return Ok(()),
        HostKeyPolicy::KnownHosts(path) => path,
    };
    let name = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Err(format!(
                "cannot read the SSH known hosts file {} ({err}): set GITFLEET_SSH_KNOWN_HOSTS to a file listing \
                 {name}, or GITFLEET_SSH_STRICT_HOST_KEY_CHECKING=no to accept any host key",
                path.display()
            ));
        }
    };
    match lookup(&text, &name, key) {
        Lookup::Match => Ok(()),
        Lookup::Revoked => Err(format!("the SSH host key of {name} is marked @revoked in {}", path.display())),
        Lookup::Mismatch => Err(format!(
            "the SSH host key of {name} does not match the key listed in {} (the host key changed, or someone is \
             intercepting the connection)",
            path.display()
        )),
        Lookup::Unknown => Err(format!(
            "the SSH host {name} is not in the known hosts file {}: add its key (ssh-keyscan -p {port} {host}) or set \
             GITFLEET_SSH_STRICT_HOST_KEY_CHECKING=no",
            path.display()
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Match,
    Mismatch,
    Revoked,
    Unknown,
}

fn lookup(text: &str, name: &str, key: &[u8]) -> Lookup {
    let mut seen = false;
    let mut matched = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (marker, hosts) = match fields.next() {
            Some(m) if m.starts_with('@') => (Some(m), fields.next()),
            first => (None, first),
        };
        let (Some(hosts), Some(_kind), Some(blob)) = (hosts, fields.next(), fields.next()) else { continue };
        if marker == Some("@cert-authority") || !hosts_match(hosts, name) {
            continue;
        }
        let same_key = openssl::base64::decode_block(blob).is_ok_and(|b| b == key);
        if marker == Some("@revoked") {
            if same_key {
                return Lookup::Revoked;
            }
            continue;
        }
        seen = true;
        matched |= same_key;
    }
    match (matched, seen) {
        (true, _) => Lookup::Match,
        (false, true) => Lookup::Mismatch,
        (false, false) => Lookup::Unknown,
    }
}

/// A host field: `|1|salt|hash`, or patterns where a matching `!pattern` excludes the host.
fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut hit = false;
    for pattern in field.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard(negated.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => hit |= wildcard(pattern.as_bytes(), name.as_bytes()),
        }
    }
    hit
}

/// `salt|hash`, both base64: the host matches when HMAC-SHA1(salt, name) is the hash.
fn hashed_match(hashed: &str, name: &str) -> bool {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let Some((salt, hash)) = hashed.split_once('|') else { return false };
    let (Ok(salt), Ok(hash)) = (openssl::base64::decode_block(salt), openssl::base64::decode_block(hash)) else {
        return false;
    };
    let digest = PKey::hmac(&salt).and_then(|key| {
        let mut signer = Signer::new(MessageDigest::sha1(), &key)?;
        signer.update(name.as_bytes())?;
        signer.sign_to_vec()
    });
    digest.is_ok_and(|d| d == hash)
}

/// Case-insensitive glob with `*` and `?`, as OpenSSH matches host patterns.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => wildcard(rest, name) || (!name.is_empty() && wildcard(pattern, &name[1..])),
        (Some((b'?', rest)), Some((_, tail))) => wildcard(rest, tail),
        (Some((p, rest)), Some((n, tail))) if p.eq_ignore_ascii_case(n) => wildcard(rest, tail),
        _ => false,
    }
}

/// The host and port of an `ssh://` URL (port 22 when none is given), for the known-hosts lookup.
pub fn ssh_host_port(url: &str) -> Option<(String, u16)> {
    let parsed = url::Url::parse(url).ok().filter(|u| u.scheme() == "ssh")?;
    let host = parsed.host_str()?.trim_start_matches('[').trim_end_matches(']').to_owned();
    Some((host, parsed.port().unwrap_or(22)))
}

/// The default known-hosts file: `$HOME/.ssh/known_hosts`, as OpenSSH uses.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    Path::new(&home).join(".ssh").join("known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20abcdefghijklmnopqrstuvwxyz012345";

    fn b64(bytes: &[u8]) -> String {
        openssl::base64::encode_block(bytes)
    }

    #[test]
    fn plain_patterns_ports_and_negation() {
        let text = format!(
            "# comment\n[127.0.0.1]:2222 ssh-ed25519 {k}\n*.example.com,!bad.example.com ssh-ed25519 {k}\n",
            k = b64(KEY)
        );
        assert_eq!(lookup(&text, "[127.0.0.1]:2222", KEY), Lookup::Match);
        assert_eq!(lookup(&text, "127.0.0.1", KEY), Lookup::Unknown);
        assert_eq!(lookup(&text, "git.EXAMPLE.com", KEY), Lookup::Match);
        assert_eq!(lookup(&text, "bad.example.com", KEY), Lookup::Unknown);
        assert_eq!(lookup(&text, "[127.0.0.1]:2222", b"other"), Lookup::Mismatch);
    }

    #[test]
    fn hashed_hosts_and_revoked_keys() {
        use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
        let salt = b"0123456789abcdefghij";
        let key = PKey::hmac(salt).unwrap();
        let mut signer = Signer::new(MessageDigest::sha1(), &key).unwrap();
        signer.update(b"git.example.org").unwrap();
        let hash = signer.sign_to_vec().unwrap();
        let text = format!("|1|{}|{} ssh-ed25519 {}\n", b64(salt), b64(&hash), b64(KEY));
        assert_eq!(lookup(&text, "git.example.org", KEY), Lookup::Match);
        assert_eq!(lookup(&text, "git.example.net", KEY), Lookup::Unknown);
        let revoked = format!("{text}@revoked * ssh-ed25519 {}\n", b64(KEY));
        assert_eq!(lookup(&revoked, "git.example.org", KEY), Lookup::Revoked);
    }

    #[test]
    fn messages_name_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("known_hosts");
        std::fs::write(&file, "").unwrap();
        let policy = HostKeyPolicy::KnownHosts(file);
        let err = check(&policy, "127.0.0.1", 2222, KEY).unwrap_err();
        assert!(err.contains("[127.0.0.1]:2222 is not in the known hosts file"), "{err}");
        assert!(err.contains("GITFLEET_SSH_STRICT_HOST_KEY_CHECKING=no"), "{err}");
        assert!(check(&HostKeyPolicy::AcceptAny, "h", 22, KEY).is_ok());
        assert_eq!(ssh_host_port("ssh://git@[::1]:2200/r.git"), Some(("::1".to_owned(), 2200)));
        assert_eq!(ssh_host_port("ssh://host/r.git"), Some(("host".to_owned(), 22)));
        assert_eq!(ssh_host_port("https://host/r.git"), None);
    }
}
