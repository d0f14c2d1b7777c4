//! Storage settings, named as django-storages names them (spec g.2), read from the environment: the global
//! `AWS_*` settings, and per data type overrides in `GITFLEET_STORAGES` (JSON keyed by data type identifier, with
//! django-storages option names plus `upload_to`), as the S3 guide's `MediaStorage` subclass overrides `bucket_name`
//! and `location` for one kind of file.
//!
//! With no `AWS_STORAGE_BUCKET_NAME`, everything goes to the filesystem under `GITFLEET_STORAGE_ROOT`, in the same
//! layout, one folder per bucket: `default/` for the default store, `<bucket_name>/` for an override naming one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsError {
    /// django-storages: `ImproperlyConfigured("Invalid setting '<k>' for S3Storage")`.
    #[error("Invalid setting '{0}' for S3Storage (GITFLEET_STORAGES)")]
    UnknownOption(String),
    #[error("GITFLEET_STORAGES is not valid JSON: {0}")]
    Json(String),
    /// django-storages refuses a location starting with `/`.
    #[error("location must not start with '/': {0:?}")]
    AbsoluteLocation(String),
    #[error("AWS_S3_ADDRESSING_STYLE must be 'path' or 'virtual', not {0:?}")]
    Addressing(String),
    #[error("AWS_S3_SESSION_PROFILE cannot be combined with an access key and secret (django-storages refuses it)")]
    ProfileAndKeys,
    #[error("a number was expected for {0}")]
    Number(&'static str),
}

/// One storage: where a data type's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `None`: the default store of the filesystem backend (`root/default`; an override naming a bucket gets
    /// `root/<bucket>`).
    pub bucket_name: Option<String>,
    pub location: String,
    pub default_acl: Option<String>,
    /// The folder under `location` that this store's objects go to (blobs, manifests, artifacts, pointers).
    pub upload_to: String,
}

/// Everything the worker needs to reach its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    pub default: StoreSettings,
    /// Data type identifier -> its store.
    pub overrides: BTreeMap<String, StoreSettings>,
    pub s3: Option<S3Settings>,
    pub root: PathBuf,
    /// Files over this many bytes are uploaded in parts of this size.
    pub multipart_threshold: u64,
    /// Objects of a deleted repository are kept this many days (0: removed with the repository).
    pub retention_days: u32,
    /// At most this many blob uploads (with their existence checks) in flight at once, per store.
    pub upload_concurrency: usize,
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub security_token: Option<String>,
    pub session_profile: Option<String>,
    /// Tries of each request inside the SDK (`AWS_MAX_ATTEMPTS`, the SDK's own name; default 3).
    pub max_attempts: u32,
    /// Longest one request attempt, and one operation with its retries, may take (`GITFLEET_STORAGE_TIMEOUT_SECS`,
    /// default 60): a server that accepts and never answers is a transient fault, not a stalled sync.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key.as_ref().map(|_| "(set)"))
            .field("session_profile", &self.session_profile)
            .finish_non_exhaustive()
    }
}

/// A per-type override as written in `GITFLEET_STORAGES`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    bucket_name: Option<String>,
    location: Option<String>,
    default_acl: Option<String>,
    upload_to: Option<String>,
}

/// The default `upload_to`: keeps repository folders apart from `reports/`.
pub const DEFAULT_UPLOAD_TO: &str = "git";
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;

/// `GITFLEET_STORAGES`: per data type stores, each option defaulting to the default store's.
fn overrides(json: &str, default: &StoreSettings) -> Result<BTreeMap<String, StoreSettings>, SettingsError> {
    let mut overrides = BTreeMap::new();
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| SettingsError::Json(e.to_string()))?;
    for (data_type, options) in raw {
        if let Some(unknown) = options.as_object().and_then(|o| {
            o.keys().find(|k| !["bucket_name", "location", "default_acl", "upload_to"].contains(&k.as_str()))
        }) {
            return Err(SettingsError::UnknownOption(unknown.clone()));
        }
        let o: Override = serde_json::from_value(options).map_err(|e| SettingsError::Json(e.to_string()))?;
        let location = o.location.unwrap_or_else(|| default.location.clone());
        if location.starts_with('/') {
            return Err(SettingsError::AbsoluteLocation(location));
        }
        let store = StoreSettings {
            bucket_name: o.bucket_name.or_else(|| default.bucket_name.clone()),
            location,
            default_acl: o.default_acl.or_else(|| default.default_acl.clone()),
            upload_to: o.upload_to.unwrap_or_else(|| default.upload_to.clone()),
        };
        overrides.insert(data_type, store);
    }
    Ok(overrides)
}

impl StorageSettings {
    /// The settings of this process's environment (the only place the worker reads storage variables).
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from `(name, value)` pairs (the process environment in production).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, SettingsError> {
        let vars: BTreeMap<String, String> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let get = |name: &str| vars.get(name).cloned();
        let first = |names: &[&str]| names.iter().find_map(|n| get(n));
        let location = get("AWS_LOCATION").unwrap_or_default();
        if location.starts_with('/') {
            return Err(SettingsError::AbsoluteLocation(location));
        }
        let default = StoreSettings {
            bucket_name: get("AWS_STORAGE_BUCKET_NAME"),
            location,
            default_acl: get("AWS_DEFAULT_ACL"),
            upload_to: get("GITFLEET_STORAGE_UPLOAD_TO").unwrap_or_else(|| DEFAULT_UPLOAD_TO.to_owned()),
        };
        let path_style = match get("AWS_S3_ADDRESSING_STYLE").as_deref() {
            None | Some("virtual") => false,
            Some("path") => true,
            Some(other) => return Err(SettingsError::Addressing(other.to_owned())),
        };
        let access_key = first(&["AWS_S3_ACCESS_KEY_ID"]);
        let secret_key = first(&["AWS_S3_SECRET_ACCESS_KEY"]);
        let session_profile = get("AWS_S3_SESSION_PROFILE");
        if session_profile.is_some() && (access_key.is_some() || secret_key.is_some()) {
            return Err(SettingsError::ProfileAndKeys);
        }
        let overrides = match get("GITFLEET_STORAGES") {
            Some(json) => overrides(&json, &default)?,
            None => BTreeMap::new(),
        };
        let timeout_secs = match get("GITFLEET_STORAGE_TIMEOUT_SECS") {
            None => 60,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&s| s > 0)
                .ok_or(SettingsError::Number("GITFLEET_STORAGE_TIMEOUT_SECS"))?,
        };
        let s3 = default.bucket_name.is_some().then(|| S3Settings {
            region: get("AWS_S3_REGION_NAME"),
            endpoint_url: get("AWS_S3_ENDPOINT_URL"),
            path_style,
            access_key,
            secret_key,
            security_token: first(&["AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"]),
            session_profile,
            max_attempts: get("AWS_MAX_ATTEMPTS").and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            timeout: std::time::Duration::from_secs(timeout_secs),
        });
        let number = |name: &'static str, default: u64| match get(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| SettingsError::Number(name)),
        };
        let root = get("GITFLEET_STORAGE_ROOT").map_or_else(
            || {
                let home = vars.get("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
                home.join(".gitfleet").join("storage")
            },
            PathBuf::from,
        );
        Ok(Self {
            default,
            overrides,
            s3,
            root,
            multipart_threshold: number("GITFLEET_STORAGE_MULTIPART_THRESHOLD", DEFAULT_MULTIPART_THRESHOLD)?
                .max(5 * 1024 * 1024),
            retention_days: u32::try_from(number("GITFLEET_STORAGE_RETENTION_DAYS", 0)?).unwrap_or(u32::MAX),
            upload_concurrency: usize::try_from(number("GITFLEET_STORAGE_UPLOAD_CONCURRENCY", 64)?)
                .unwrap_or(usize::MAX)
                .clamp(1, 256),
        })
    }

    /// The store of a data type: its override, else the default.
    pub fn store_for(&self, data_type: &str) -> &StoreSettings {
        self.overrides.get(data_type).unwrap_or(&self.default)
    }
}

/// django-storages' `safe_join(location, name)` (spec g.3 step 4) after `clean_name`: the key, or None when `name`
/// would escape the location.
pub fn key(location: &str, name: &str) -> Option<String> {
    let name = name.replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for part in location.trim_end_matches('/').split('/').chain(name.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    let base = location.trim_matches('/');
    (base.is_empty() || joined == base || joined.starts_with(&format!("{base}/"))).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn django_names_and_per_type_overrides() {
        let settings = StorageSettings::from_vars(vars(&[
            ("AWS_STORAGE_BUCKET_NAME", "nautobot"),
            ("AWS_LOCATION", "media/"),
            ("AWS_DEFAULT_ACL", "public-read"),
            ("AWS_S3_ADDRESSING_STYLE", "path"),
            ("AWS_S3_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("GITFLEET_STORAGES", r#"{"extras.job": {"bucket_name": "private", "default_acl": "private", "upload_to": "software_images"}}"#),
        ]))
        .unwrap();
        assert_eq!(settings.store_for("extras.configcontext").bucket_name.as_deref(), Some("nautobot"));
        let jobs = settings.store_for("extras.job");
        assert_eq!((jobs.bucket_name.as_deref(), jobs.default_acl.as_deref()), (Some("private"), Some("private")));
        assert_eq!((jobs.location.as_str(), jobs.upload_to.as_str()), ("media/", "software_images"));
        assert!(settings.s3.as_ref().unwrap().path_style);
        let unknown = StorageSettings::from_vars(vars(&[("GITFLEET_STORAGES", r#"{"extras.job": {"bucket": "x"}}"#)]));
        assert_eq!(unknown, Err(SettingsError::UnknownOption("bucket".into())));
        let absolute = StorageSettings::from_vars(vars(&[("AWS_LOCATION", "/media")]));
        assert_eq!(absolute, Err(SettingsError::AbsoluteLocation("/media".into())));
        let filesystem = StorageSettings::from_vars(vars(&[("GITFLEET_STORAGE_ROOT", "/srv/files")])).unwrap();
        assert!(filesystem.s3.is_none());
        assert_eq!(filesystem.root, PathBuf::from("/srv/files"));
    }

    #[test]
    fn upload_concurrency_has_a_default_and_bounds() {
        let of = |v: &str| StorageSettings::from_vars(vars(&[("GITFLEET_STORAGE_UPLOAD_CONCURRENCY", v)]));
        assert_eq!(StorageSettings::from_vars(vars(&[])).unwrap().upload_concurrency, 64);
        assert_eq!(of("4").unwrap().upload_concurrency, 4);
        assert_eq!(of("0").unwrap().upload_concurrency, 1);
        assert_eq!(of("100000").unwrap().upload_concurrency, 256);
        assert!(of("many").is_err());
    }

    #[test]
    fn keys_as_safe_join_builds_them() {
        assert_eq!(
            key("subfolder/name/", "devicetype-images/x.png").as_deref(),
            Some("subfolder/name/devicetype-images/x.png")
        );
        assert_eq!(key("", "devicetype-images/x.png").as_deref(), Some("devicetype-images/x.png"));
        assert_eq!(key("media", "a/./b/../c").as_deref(), Some("media/a/c"));
        assert_eq!(key("media", "../escape"), None);
        assert_eq!(key("", "/lead"), Some("lead".to_owned()));
    }
}
