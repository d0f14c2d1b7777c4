//! Git hosts' push notifications, read into one neutral [`Push`]: which remote, which branch or tag, which commit.
//! Each provider's payload is parsed here (after its signature was checked over the raw bytes); matching a push to
//! repositories is then one comparison of [`remote_key`]s and refs, whoever sent it.

use serde_json::Value;

/// The Git hosts that can notify a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Gitlab,
    /// Gitea and Forgejo.
    Gitea,
    /// Bitbucket Cloud.
    Bitbucket,
    /// Any other system that signs its body with HMAC-SHA256 (CI, scripts).
    Generic,
}

impl Provider {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "github" => Self::Github,
            "gitlab" => Self::Gitlab,
            "gitea" | "forgejo" => Self::Gitea,
            "bitbucket" => Self::Bitbucket,
            "generic" => Self::Generic,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Gitea => "gitea",
            Self::Bitbucket => "bitbucket",
            Self::Generic => "generic",
        }
    }
}

/// What a push moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushedRef {
    Branch(String),
    Tag(String),
}

/// One push, whoever notified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Every URL the payload gives for the repository (clone, SSH, web), as written.
    pub remote_urls: Vec<String>,
    pub pushed: PushedRef,
    /// The commit the ref points at now; `None` when the payload does not say.
    pub commit: Option<String>,
    /// The ref was deleted: nothing to sync.
    pub deleted: bool,
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A push to sync.
    Push(Push),
    /// A check that the hook is set up (GitHub's `ping`).
    Ping,
    /// An event gitfleet does not act on (an issue comment, a merge request...): acknowledged, nothing done.
    Ignored(String),
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the payload has no {0}")]
    Missing(&'static str),
}

/// Reads a provider's payload; `event` is the provider's event header (`X-GitHub-Event`, `X-Gitlab-Event`,
/// `X-Gitea-Event`, `X-Event-Key`), empty for the generic endpoint.
pub fn parse(provider: Provider, event: &str, body: &[u8]) -> Result<Notification, PayloadError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    match provider {
        Provider::Github | Provider::Gitea => match event {
            "ping" => Ok(Notification::Ping),
            "push" => github_like(&json).map(Notification::Push),
            other => Ok(Notification::Ignored(other.to_owned())),
        },
        Provider::Gitlab => match event {
            "Push Hook" | "Tag Push Hook" | "System Hook" if is_gitlab_push(&json) => {
                gitlab(&json).map(Notification::Push)
            }
            other => Ok(Notification::Ignored(other.to_owned())),
        },
        Provider::Bitbucket => match event {
            "repo:push" => bitbucket(&json).map(Notification::Push),
            other => Ok(Notification::Ignored(other.to_owned())),
        },
        Provider::Generic => generic(&json).map(Notification::Push),
    }
}

fn text<'a>(json: &'a Value, pointer: &str) -> Option<&'a str> {
    json.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn urls(json: &Value, pointers: &[&str]) -> Vec<String> {
    pointers.iter().filter_map(|p| text(json, p)).map(str::to_owned).collect()
}

/// `refs/heads/x` is branch x, `refs/tags/x` tag x; a bare name is a branch.
fn pushed_ref(reference: &str) -> PushedRef {
    if let Some(tag) = reference.strip_prefix("refs/tags/") {
        PushedRef::Tag(tag.to_owned())
    } else {
        PushedRef::Branch(reference.strip_prefix("refs/heads/").unwrap_or(reference).to_owned())
    }
}

/// A commit id of all zeros is git's way of saying the ref is gone.
fn is_zero(commit: &str) -> bool {
    !commit.is_empty() && commit.bytes().all(|b| b == b'0')
}

/// GitHub's push payload, which Gitea and Forgejo share: `ref`, `after`, `deleted`, `repository.*_url`.
fn github_like(json: &Value) -> Result<Push, PayloadError> {
    let reference = text(json, "/ref").ok_or(PayloadError::Missing("ref"))?;
    let remote_urls =
        urls(json, &["/repository/clone_url", "/repository/ssh_url", "/repository/git_url", "/repository/html_url"]);
    if remote_urls.is_empty() {
        return Err(PayloadError::Missing("repository URL"));
    }
    let after = text(json, "/after").map(str::to_owned);
    let deleted =
        json.get("deleted").and_then(Value::as_bool).unwrap_or(false) || after.as_deref().is_some_and(is_zero);
    Ok(Push { remote_urls, pushed: pushed_ref(reference), commit: after.filter(|c| !is_zero(c)), deleted })
}

fn is_gitlab_push(json: &Value) -> bool {
    matches!(text(json, "/object_kind"), Some("push" | "tag_push"))
}

/// GitLab's push and tag push: `ref`, `checkout_sha` (null when deleted), `project.git_*_url`.
fn gitlab(json: &Value) -> Result<Push, PayloadError> {
    let reference = text(json, "/ref").ok_or(PayloadError::Missing("ref"))?;
    let remote_urls = urls(
        json,
        &[
            "/project/git_http_url",
            "/project/git_ssh_url",
            "/project/web_url",
            "/repository/git_http_url",
            "/repository/git_ssh_url",
        ],
    );
    if remote_urls.is_empty() {
        return Err(PayloadError::Missing("project URL"));
    }
    let commit = text(json, "/checkout_sha").or_else(|| text(json, "/after")).map(str::to_owned);
    let deleted = commit.is_none() || commit.as_deref().is_some_and(is_zero);
    Ok(Push { remote_urls, pushed: pushed_ref(reference), commit: commit.filter(|c| !is_zero(c)), deleted })
}

/// Bitbucket Cloud's `repo:push`: the last change's `new` ref (`type`, `name`, `target.hash`); the repository by
/// its web link (`https://bitbucket.org/{workspace}/{slug}`), which its clone URLs normalize to.
fn bitbucket(json: &Value) -> Result<Push, PayloadError> {
    let changes =
        json.pointer("/push/changes").and_then(Value::as_array).ok_or(PayloadError::Missing("push.changes"))?;
    let change = changes.last().ok_or(PayloadError::Missing("push.changes"))?;
    let mut remote_urls = urls(json, &["/repository/links/html/href"]);
    if let Some(full_name) = text(json, "/repository/full_name") {
        remote_urls.push(format!("https://bitbucket.org/{full_name}"));
    }
    if remote_urls.is_empty() {
        return Err(PayloadError::Missing("repository link"));
    }
    let Some(new) = change.get("new").filter(|n| !n.is_null()) else {
        // The ref was deleted: `new` is null and `old` names it.
        let old = change.get("old").ok_or(PayloadError::Missing("push.changes[].new"))?;
        let name = text(old, "/name").ok_or(PayloadError::Missing("push.changes[].old.name"))?;
        let pushed = if text(old, "/type") == Some("tag") {
            PushedRef::Tag(name.into())
        } else {
            PushedRef::Branch(name.into())
        };
        return Ok(Push { remote_urls, pushed, commit: None, deleted: true });
    };
    let name = text(new, "/name").ok_or(PayloadError::Missing("push.changes[].new.name"))?.to_owned();
    let pushed = if text(new, "/type") == Some("tag") { PushedRef::Tag(name) } else { PushedRef::Branch(name) };
    Ok(Push { remote_urls, pushed, commit: text(new, "/target/hash").map(str::to_owned), deleted: false })
}

/// The generic endpoint's body: `{"remote_url": ..., "ref": "refs/heads/main" (or "branch": "main"), "commit": ...}`.
fn generic(json: &Value) -> Result<Push, PayloadError> {
    let remote_url = text(json, "/remote_url").ok_or(PayloadError::Missing("remote_url"))?;
    let pushed = match (text(json, "/ref"), text(json, "/branch"), text(json, "/tag")) {
        (Some(reference), _, _) => pushed_ref(reference),
        (None, Some(branch), _) => PushedRef::Branch(branch.to_owned()),
        (None, None, Some(tag)) => PushedRef::Tag(tag.to_owned()),
        _ => return Err(PayloadError::Missing("ref, branch or tag")),
    };
    Ok(Push {
        remote_urls: vec![remote_url.to_owned()],
        pushed,
        commit: text(json, "/commit").map(str::to_owned),
        deleted: false,
    })
}

/// A remote URL reduced to what names the repository, so the forms a host gives for one repository compare equal:
/// no scheme, user or default port, the host in lower case, `scp`-like `git@host:path` read as `host/path`, and no
/// trailing `/` or `.git`. `file://` paths keep their path. `None` for what is not a URL.
pub fn remote_key(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => {
            // scp-like: [user@]host:path, with no scheme and no slash before the colon.
            let (host, path) = url.split_once(':')?;
            if host.contains('/') || host.is_empty() {
                return None;
            }
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            return Some(join(&host.to_ascii_lowercase(), path));
        }
    };
    if scheme == "file" {
        return Some(format!("file:{}", trim_path(rest)));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some("80"),
        "https" => Some("443"),
        "ssh" | "git+ssh" => Some("22"),
        "git" => Some("9418"),
        _ => None,
    };
    let host = match (host_port.rsplit_once(':'), default_port) {
        (Some((host, port)), Some(default)) if port == default => host.to_owned(),
        _ => host_port,
    };
    if host.is_empty() {
        return None;
    }
    Some(join(&host, path))
}

fn trim_path(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    path.trim_end_matches('/')
}

fn join(host: &str, path: &str) -> String {
    let path = trim_path(path.trim_start_matches('/'));
    format!("{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remote_keys_compare_a_hosts_forms_of_one_repository() {
        let key = Some("github.com/acme/network-data".to_owned());
        for url in [
            "https://github.com/acme/network-data.git",
            "https://github.com/acme/network-data",
            "https://GitHub.com:443/acme/network-data/",
            "http://github.com/acme/network-data.git",
            "git@github.com:acme/network-data.git",
            "ssh://git@github.com/acme/network-data.git",
            "ssh://git@github.com:22/acme/network-data",
            "git://github.com/acme/network-data.git",
        ] {
            assert_eq!(remote_key(url), key, "{url}");
        }
        assert_eq!(remote_key("ssh://git@gitlab.internal:2222/a/b.git").as_deref(), Some("gitlab.internal:2222/a/b"));
        assert_ne!(remote_key("https://github.com/acme/Network-Data"), key, "paths keep their case");
        assert_eq!(remote_key("file:///srv/git/repo.git").as_deref(), Some("file:/srv/git/repo"));
        assert_eq!(remote_key("not a url"), None);
    }

    #[test]
    fn github_push_ping_and_deletion() {
        let body = json!({"ref": "refs/heads/main", "after": "a".repeat(40), "deleted": false,
            "repository": {"clone_url": "https://github.com/a/b.git", "ssh_url": "git@github.com:a/b.git"}});
        let Notification::Push(push) = parse(Provider::Github, "push", body.to_string().as_bytes()).unwrap() else {
            panic!("a push")
        };
        assert_eq!(push.pushed, PushedRef::Branch("main".into()));
        assert_eq!(push.commit, Some("a".repeat(40)));
        assert_eq!(push.remote_urls.len(), 2);
        assert_eq!(parse(Provider::Github, "ping", b"{\"zen\": \"hi\"}").unwrap(), Notification::Ping);
        assert_eq!(parse(Provider::Github, "issues", b"{}").unwrap(), Notification::Ignored("issues".into()));
        let gone = json!({"ref": "refs/tags/v1", "after": "0".repeat(40), "deleted": true,
            "repository": {"clone_url": "https://github.com/a/b.git"}});
        let Notification::Push(push) = parse(Provider::Github, "push", gone.to_string().as_bytes()).unwrap() else {
            panic!("a push")
        };
        assert!(push.deleted && push.commit.is_none() && push.pushed == PushedRef::Tag("v1".into()));
        assert!(matches!(parse(Provider::Github, "push", b"{]"), Err(PayloadError::NotJson(_))));
        assert_eq!(parse(Provider::Github, "push", b"{\"ref\": \"x\"}"), Err(PayloadError::Missing("repository URL")));
    }

    #[test]
    fn gitlab_bitbucket_and_generic() {
        let body = json!({"object_kind": "tag_push", "ref": "refs/tags/v2", "checkout_sha": "b".repeat(40),
            "project": {"git_http_url": "https://gitlab.com/g/p.git", "git_ssh_url": "git@gitlab.com:g/p.git"}});
        let Notification::Push(push) = parse(Provider::Gitlab, "Tag Push Hook", body.to_string().as_bytes()).unwrap()
        else {
            panic!("a push")
        };
        assert_eq!((push.pushed, push.commit), (PushedRef::Tag("v2".into()), Some("b".repeat(40))));
        let body = json!({"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": "c".repeat(40)}}}]},
            "repository": {"full_name": "team/repo", "links": {"html": {"href": "https://bitbucket.org/team/repo"}}}});
        let Notification::Push(push) = parse(Provider::Bitbucket, "repo:push", body.to_string().as_bytes()).unwrap()
        else {
            panic!("a push")
        };
        assert_eq!(remote_key(&push.remote_urls[0]), remote_key("git@bitbucket.org:team/repo.git"));
        assert_eq!(push.commit, Some("c".repeat(40)));
        let body = json!({"remote_url": "https://git.example/x.git", "branch": "prod", "commit": "d".repeat(40)});
        let Notification::Push(push) = parse(Provider::Generic, "", body.to_string().as_bytes()).unwrap() else {
            panic!("a push")
        };
        assert_eq!(push.pushed, PushedRef::Branch("prod".into()));
    }
}
