//! Secrets groups, configured on the processes that need them (the worker's git credentials, `producer serve`'s
//! webhook secrets): from environment variables or from files (a mounted Kubernetes Secret). They are never carried
//! in events, never stored in PostgreSQL, and reach git only through git2's credential callback, so no URL, mirror
//! config or log line ever holds them.
//!
//! For a group named `github-token`:
//! - environment: `GITFLEET_SECRETS_GITHUB_TOKEN_TOKEN`, `GITFLEET_SECRETS_GITHUB_TOKEN_USERNAME` (the group name
//!   upper-cased, every other character than A-Z and 0-9 becoming `_`);
//! - files: `$GITFLEET_SECRETS_DIR/github-token/token` and `.../username` (trailing newlines ignored).
//!
//! For ssh:// remotes a group holds a private key instead: `GITFLEET_SECRETS_<KEY>_SSH_KEY` (and
//! `_SSH_PASSPHRASE`), or the files `ssh-privatekey` and `ssh-passphrase` (the key names of a Kubernetes
//! `kubernetes.io/ssh-auth` Secret). The SSH user is the URL's (`ssh://git@host/...`), else the group's `username`.
//!
//! Provider conventions: a token alone is sent as the user name (GitHub, as Nautobot does); GitLab uses the user
//! `oauth2` (or a deploy token's user name) with the token; Bitbucket a user name with an app password or token.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// A secret value: shown as `(secret)` in any debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsGroup {
    pub username: Option<String>,
    pub token: Option<Secret>,
    pub ssh_key: Option<Secret>,
    pub ssh_passphrase: Option<Secret>,
}

/// Every group this worker knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    groups: HashMap<String, SecretsGroup>,
    /// Environment-variable form of the names, for groups given only there.
    by_env_key: HashMap<String, SecretsGroup>,
}

const PREFIX: &str = "GITFLEET_SECRETS_";

/// `github-token` -> `GITHUB_TOKEN`.
pub fn env_key(group: &str) -> String {
    group.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

impl Secrets {
    /// Reads `GITFLEET_SECRETS_<KEY>_TOKEN` / `_USERNAME` variables and, if given, a directory of group folders.
    /// The groups of this process's environment and of `dir` (the only place the worker reads secrets variables).
    pub fn from_env(dir: Option<&Path>) -> std::io::Result<Self> {
        Self::load(std::env::vars(), dir)
    }

    pub fn load(vars: impl IntoIterator<Item = (String, String)>, dir: Option<&Path>) -> std::io::Result<Self> {
        let mut secrets = Self::default();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            if rest == "DIR" {
                continue;
            }
            if let Some(key) = rest.strip_suffix("_TOKEN") {
                secrets.by_env_key.entry(key.to_owned()).or_default().token = Some(Secret::new(value));
            } else if let Some(key) = rest.strip_suffix("_USERNAME") {
                secrets.by_env_key.entry(key.to_owned()).or_default().username = Some(value);
            } else if let Some(key) = rest.strip_suffix("_SSH_KEY") {
                secrets.by_env_key.entry(key.to_owned()).or_default().ssh_key = Some(Secret::new(value));
            } else if let Some(key) = rest.strip_suffix("_SSH_PASSPHRASE") {
                secrets.by_env_key.entry(key.to_owned()).or_default().ssh_passphrase = Some(Secret::new(value));
            }
        }
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if !entry.path().is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let read = |file: &str| {
                    std::fs::read_to_string(entry.path().join(file))
                        .ok()
                        .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
                };
                let group = SecretsGroup {
                    username: read("username"),
                    token: read("token").map(Secret::new),
                    // A key file keeps its final newline: some key parsers want it.
                    ssh_key: std::fs::read_to_string(entry.path().join("ssh-privatekey")).ok().map(Secret::new),
                    ssh_passphrase: read("ssh-passphrase").map(Secret::new),
                };
                secrets.groups.insert(name, group);
            }
        }
        Ok(secrets)
    }

    /// The group, from the directory first, then from the environment.
    pub fn get(&self, name: &str) -> Option<&SecretsGroup> {
        self.groups.get(name).or_else(|| self.by_env_key.get(&env_key(name)))
    }
}

/// Why a repository's credentials cannot be used: reported before any network call. `ssh`: the remote is an
/// ssh:// URL, so the group must hold a private key rather than a token.
pub fn problem(group_name: &str, group: Option<&SecretsGroup>, ssh: bool) -> Option<String> {
    let key = env_key(group_name);
    let empty = |s: Option<&Secret>| s.is_none_or(|t| t.expose().is_empty());
    match group {
        // Worded so that the log sanitizer (which redacts the word after "secrets" or "username") leaves it whole.
        None => Some(format!(
            "The secrets_group \"{group_name}\" is not configured on this worker: set {PREFIX}{key}_TOKEN (plus \
             {PREFIX}{key}_USERNAME=<user> when the host needs one), or mount the group as \
             $GITFLEET_SECRETS_DIR/{group_name}/token."
        )),
        Some(g) if ssh && empty(g.ssh_key.as_ref()) => Some(format!(
            "The secrets_group \"{group_name}\" has no SSH private key, which an ssh:// remote needs: set \
             {PREFIX}{key}_SSH_KEY (and {PREFIX}{key}_SSH_PASSPHRASE for an encrypted key) or add the file \
             {group_name}/ssh-privatekey."
        )),
        Some(g) if !ssh && empty(g.token.as_ref()) => Some(format!(
            "The secrets_group \"{group_name}\" has no token (HTTP(S) token): set {PREFIX}{key}_TOKEN or add the \
             file {group_name}/token."
        )),
        Some(_) => None,
    }
}

/// Replaces every occurrence of the group's secret values in a message.
pub fn redact(message: &str, group: Option<&SecretsGroup>) -> String {
    let mut out = message.to_owned();
    let values = group.into_iter().flat_map(|g| [&g.token, &g.ssh_passphrase, &g.ssh_key]).flatten();
    for value in values.filter(|t| t.expose().trim().len() >= 4) {
        out = out.replace(value.expose().trim(), "(redacted)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_environment_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("gitlab-deploy")).unwrap();
        std::fs::write(tmp.path().join("gitlab-deploy/token"), "glpat-123\n").unwrap();
        std::fs::write(tmp.path().join("gitlab-deploy/username"), "oauth2\n").unwrap();
        let vars = [
            ("GITFLEET_SECRETS_GITHUB_TOKEN_TOKEN".to_owned(), "ghp_abc".to_owned()),
            ("GITFLEET_SECRETS_BB_USERNAME".to_owned(), "alice".to_owned()),
            ("GITFLEET_SECRETS_DIR".to_owned(), "/ignored".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let secrets = Secrets::load(vars, Some(tmp.path())).unwrap();
        let github = secrets.get("github-token").unwrap();
        assert_eq!((github.username.as_deref(), github.token.as_ref().map(Secret::expose)), (None, Some("ghp_abc")));
        let gitlab = secrets.get("gitlab-deploy").unwrap();
        assert_eq!(gitlab.username.as_deref(), Some("oauth2"));
        assert_eq!(gitlab.token.as_ref().map(Secret::expose), Some("glpat-123"));
        assert!(problem("bb", secrets.get("bb"), false).unwrap().contains("has no token"));
        assert!(problem("nope", secrets.get("nope"), false).unwrap().contains("GITFLEET_SECRETS_NOPE_TOKEN"));
        assert!(problem("github-token", secrets.get("github-token"), false).is_none());
        let no_key = problem("github-token", secrets.get("github-token"), true).unwrap();
        assert!(no_key.contains("no SSH private key") && no_key.contains("GITFLEET_SECRETS_GITHUB_TOKEN_SSH_KEY"));
        assert_eq!(
            format!("{github:?}"),
            "SecretsGroup { username: None, token: Some((secret)), ssh_key: None, ssh_passphrase: None }"
        );
        assert_eq!(redact("auth for ghp_abc failed", Some(github)), "auth for (redacted) failed");
    }

    #[test]
    fn ssh_keys_from_environment_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("deploy-key")).unwrap();
        std::fs::write(tmp.path().join("deploy-key/ssh-privatekey"), "-----BEGIN KEY-----\nabc\n").unwrap();
        std::fs::write(tmp.path().join("deploy-key/ssh-passphrase"), "open sesame\n").unwrap();
        let vars = [("GITFLEET_SECRETS_OTHER_SSH_KEY".to_owned(), "KEYDATA".to_owned())];
        let secrets = Secrets::load(vars, Some(tmp.path())).unwrap();
        let deploy = secrets.get("deploy-key").unwrap();
        assert_eq!(deploy.ssh_key.as_ref().map(Secret::expose), Some("-----BEGIN KEY-----\nabc\n"));
        assert_eq!(deploy.ssh_passphrase.as_ref().map(Secret::expose), Some("open sesame"));
        assert!(problem("deploy-key", Some(deploy), true).is_none());
        assert!(problem("deploy-key", Some(deploy), false).unwrap().contains("has no token"));
        assert_eq!(secrets.get("other").unwrap().ssh_key.as_ref().map(Secret::expose), Some("KEYDATA"));
        assert_eq!(redact("bad passphrase open sesame", Some(deploy)), "bad passphrase (redacted)");
    }
}
