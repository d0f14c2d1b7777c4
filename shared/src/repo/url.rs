//! `remote_url` validation (spec a.3 step 1), narrowed to what a worker can fetch.
//!
//! Nautobot accepts any scheme of `ALLOWED_URL_SCHEMES` (mailto, tel, ...) and only fails at clone time; we accept the
//! schemes git2 fetches from (`file`, `git`, `http`, `https`, `ssh`) and refuse the rest when the definition is
//! written. We also refuse a password or token in the URL: credentials belong in a secrets group, never in a URL
//! that is stored and logged.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::MAX_FIELD_LEN;

pub const SUPPORTED_SCHEMES: &[&str] = &["file", "git", "http", "https", "ssh"];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RemoteUrlError {
    #[error("Enter a valid URL.")]
    Invalid,
    #[error("Ensure this field has no more than {MAX_FIELD_LEN} characters.")]
    TooLong,
    #[error("Unsupported URL scheme '{0}': use one of file, git, http, https, ssh.")]
    Scheme(String),
    #[error(
        "The URL must not contain a password or token (in the user part or the query string): put credentials in a secrets group."
    )]
    Credentials,
    #[error("A file:// URL must name an absolute path on this host, e.g. file:///srv/git/repo.git.")]
    FilePath,
}

/// A remote URL exactly as the user wrote it (the overlap rule compares strings, so it is never normalized).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemoteUrl(String);

impl RemoteUrl {
    pub fn parse(value: impl Into<String>) -> Result<Self, RemoteUrlError> {
        let value = value.into();
        if value.len() > MAX_FIELD_LEN {
            return Err(RemoteUrlError::TooLong);
        }
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            return Err(RemoteUrlError::Invalid);
        }
        let parsed = ::url::Url::parse(&value).map_err(|_| RemoteUrlError::Invalid)?;
        let scheme = parsed.scheme();
        if !SUPPORTED_SCHEMES.contains(&scheme) {
            return Err(RemoteUrlError::Scheme(scheme.to_owned()));
        }
        if parsed.password().is_some() {
            return Err(RemoteUrlError::Credentials);
        }
        // A token in the query string (`?access_token=...`, GitLab's `private_token`, ...) is a credential too.
        if parsed.query_pairs().any(|(key, _)| is_credential_key(&key)) {
            return Err(RemoteUrlError::Credentials);
        }
        if scheme == "file" {
            let host_ok = matches!(parsed.host_str(), None | Some("") | Some("localhost"));
            if !host_ok || !value.starts_with("file:///") && !value.starts_with("file://localhost/") {
                return Err(RemoteUrlError::FilePath);
            }
        } else {
            // Django's validator wants a host: an IP, a bracketed IPv6, an FQDN or a bare host name.
            let authority = value.split_once("://").map(|(_, rest)| rest);
            if authority.is_none_or(|rest| rest.starts_with('/')) || parsed.host_str().is_none_or(str::is_empty) {
                return Err(RemoteUrlError::Invalid);
            }
            // http(s) carries a token as the user name (GitHub style): that is a credential too.
            if matches!(scheme, "http" | "https") && !parsed.username().is_empty() {
                return Err(RemoteUrlError::Credentials);
            }
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn scheme(&self) -> &str {
        self.0.split_once(':').map_or("", |(scheme, _)| scheme)
    }
}

/// Query parameters that carry a credential with the Git hosts and proxies in use (case and `-`/`_` ignored).
fn is_credential_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    matches!(
        key.as_str(),
        "access_token"
            | "private_token"
            | "token"
            | "job_token"
            | "oauth_token"
            | "auth_token"
            | "api_key"
            | "apikey"
            | "key"
            | "password"
            | "passwd"
            | "secret"
            | "client_secret"
            | "sig"
            | "signature"
            | "x_amz_signature"
            | "x_amz_credential"
            | "x_amz_security_token"
    ) || key.ends_with("_token")
        || key.ends_with("_secret")
        || key.ends_with("_password")
}

impl TryFrom<String> for RemoteUrl {
    type Error = RemoteUrlError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<RemoteUrl> for String {
    fn from(value: RemoteUrl) -> Self {
        value.0
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_git_can_fetch() {
        for good in [
            "http://some-private-host/example.git",
            "https://github.com/nautobot/demo-git-datasource.git",
            "http://127.0.0.1:8080/repo.git",
            "http://[::1]:8080/repo.git",
            "git://127.0.0.1:9418/repo.git",
            "ssh://git@example.com/org/repo.git",
            "file:///srv/git/repo.git",
        ] {
            assert!(RemoteUrl::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_the_rest_with_a_reason() {
        assert_eq!(RemoteUrl::parse("not a url"), Err(RemoteUrlError::Invalid));
        assert_eq!(RemoteUrl::parse("http:///nohost"), Err(RemoteUrlError::Invalid));
        assert_eq!(RemoteUrl::parse("mailto:a@b.c"), Err(RemoteUrlError::Scheme("mailto".into())));
        assert_eq!(RemoteUrl::parse("https://user:tok@host/r.git"), Err(RemoteUrlError::Credentials));
        assert_eq!(RemoteUrl::parse("https://ghp_token@host/r.git"), Err(RemoteUrlError::Credentials));
        assert_eq!(RemoteUrl::parse("file://server/share/r.git"), Err(RemoteUrlError::FilePath));
        for query in ["access_token=x", "private_token=x", "token=x", "Private-Token=x", "a=1&ci_job_token=x"] {
            assert_eq!(RemoteUrl::parse(format!("https://host/r.git?{query}")), Err(RemoteUrlError::Credentials));
        }
        assert!(RemoteUrl::parse("https://host/r.git?ref=main").is_ok(), "other parameters are not credentials");
        assert_eq!(RemoteUrl::parse(format!("http://h/{}", "x".repeat(300))), Err(RemoteUrlError::TooLong));
    }
}
