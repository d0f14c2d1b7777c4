//! The Rust event types and `schemas/event.schema.json` describe the same contract: every event Rust writes is
//! valid under the schema, both sides list the same fields, and documents that break the contract are refused by
//! both.
#![allow(clippy::unwrap_used)]

use chrono::{TimeZone, Utc};
use gitfleet_shared::event::{Event, EventKind, RepositoryRef, RequestedBy, SchemaVersion, SlugRef, Version};
use gitfleet_shared::repo::{Branch, CommitId, RemoteUrl, RepoName};
use serde_json::{Value, json};
use uuid::Uuid;

fn schema() -> Value {
    let text = include_str!("../../schemas/event.schema.json");
    serde_json::from_str(text).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&schema()).unwrap()
}

fn sample(kind: EventKind, target: Option<&str>, secrets_group: Option<&str>) -> Event {
    Event {
        schema: SchemaVersion,
        event_id: Uuid::new_v4(),
        kind,
        repository: RepositoryRef {
            id: Uuid::new_v4(),
            name: RepoName::parse("Config Contexts").unwrap(),
            slug: SlugRef::parse("config_contexts").unwrap(),
            remote_url: RemoteUrl::parse("https://git.example.com/net/contexts.git").unwrap(),
            branch: Branch::parse("main").unwrap(),
            provided_contents: vec!["extras.configcontext".into(), "extras.job".into()],
            secrets_group: secrets_group.map(str::to_owned),
        },
        version: Version::new(7).unwrap(),
        target_commit: target.map(|t| CommitId::parse(t).unwrap()),
        requested_at: Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap(),
        requested_by: RequestedBy::cli(),
    }
}

fn samples() -> Vec<Event> {
    let sha1 = "0123456789abcdef0123456789abcdef01234567";
    let sha256 = "ab".repeat(32);
    let mut out = Vec::new();
    for kind in
        [EventKind::Create, EventKind::Update, EventKind::Delete, EventKind::Sync, EventKind::DryRun, EventKind::Poll]
    {
        out.push(sample(kind, None, None));
        out.push(sample(kind, Some(sha1), Some("github-token")));
    }
    out.push(sample(EventKind::Sync, Some(&sha256), None));
    let mut webhook = sample(EventKind::Sync, Some(sha1), None);
    webhook.requested_by = RequestedBy::parse("webhook:github.com").unwrap();
    webhook.repository.remote_url = RemoteUrl::parse("file:///srv/git/contexts.git").unwrap();
    out.push(webhook);
    let mut poll = sample(EventKind::Poll, None, None);
    poll.requested_by = RequestedBy::parse("poll").unwrap();
    out.push(poll);
    out
}

#[test]
fn every_event_rust_writes_is_valid_under_the_schema_and_round_trips() {
    let validator = validator();
    for event in samples() {
        let value = serde_json::to_value(&event).unwrap();
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        let back = Event::decode(&event.encode().unwrap()).unwrap();
        assert_eq!(back, event);
    }
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    out.sort();
    out
}

#[test]
fn both_sides_name_the_same_fields_and_require_all_of_them() {
    let schema = schema();
    let event = serde_json::to_value(sample(EventKind::Sync, None, None)).unwrap();
    assert_eq!(keys(&schema["properties"]), keys(&event));
    assert_eq!(strings(&schema["required"]), keys(&event));
    let repo_schema = &schema["properties"]["repository"];
    assert_eq!(keys(&repo_schema["properties"]), keys(&event["repository"]));
    assert_eq!(strings(&repo_schema["required"]), keys(&event["repository"]));
    assert_eq!(schema["properties"]["schema"]["const"], json!(gitfleet_shared::event::SCHEMA_VERSION));
    let kinds: Vec<Value> = ["create", "update", "delete", "sync", "dry_run", "poll"].map(Value::from).to_vec();
    assert_eq!(schema["properties"]["kind"]["enum"], Value::Array(kinds));
}

/// A JSON pointer into the document and the value to put there (`None` removes the field).
type Mutation = (&'static str, Option<Value>);

fn mutations() -> Vec<Mutation> {
    vec![
        ("/schema", Some(json!(2))),
        ("/schema", None),
        ("/event_id", Some(json!("not-a-uuid"))),
        ("/event_id", None),
        ("/kind", Some(json!("resync"))),
        ("/kind", None),
        ("/version", Some(json!(0))),
        ("/version", Some(json!("7"))),
        ("/version", None),
        ("/target_commit", Some(json!("ABCDEF0123456789ABCDEF0123456789ABCDEF01"))),
        ("/target_commit", Some(json!("abc123"))),
        ("/target_commit", None),
        ("/requested_at", Some(json!("yesterday"))),
        ("/requested_at", None),
        ("/requested_by", Some(json!("someone"))),
        ("/requested_by", Some(json!("api:"))),
        ("/requested_by", None),
        ("/surprise", Some(json!(true))),
        ("/repository", Some(json!("config_contexts"))),
        ("/repository/id", Some(json!(42))),
        ("/repository/id", None),
        ("/repository/name", Some(json!(""))),
        ("/repository/name", None),
        ("/repository/slug", Some(json!("1abc"))),
        ("/repository/slug", Some(json!("my-repo"))),
        ("/repository/slug", None),
        ("/repository/remote_url", Some(json!("mailto:ops@example.com"))),
        ("/repository/remote_url", Some(json!("https://user:token@git.example.com/r.git"))),
        ("/repository/remote_url", Some(json!("https://git.example.com/has space.git"))),
        ("/repository/remote_url", None),
        ("/repository/branch", Some(json!("--upload-pack=evil"))),
        ("/repository/branch", Some(json!(" main"))),
        ("/repository/branch", Some(json!(""))),
        ("/repository/branch", None),
        ("/repository/provided_contents", Some(json!("extras.job"))),
        ("/repository/provided_contents", None),
        ("/repository/secrets_group", Some(json!(5))),
        ("/repository/secrets_group", None),
        ("/repository/extra", Some(json!(1))),
    ]
}

fn apply(mut doc: Value, (pointer, value): &Mutation) -> Value {
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let target = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
    match value {
        Some(v) => target.insert(field.to_owned(), v.clone()),
        None => target.remove(field),
    };
    doc
}

#[test]
fn documents_that_break_the_contract_are_refused_by_both() {
    let validator = validator();
    let valid = serde_json::to_value(sample(EventKind::Sync, None, None)).unwrap();
    for mutation in mutations() {
        let doc = apply(valid.clone(), &mutation);
        let schema_ok = validator.is_valid(&doc);
        let rust_ok = Event::decode(doc.to_string().as_bytes()).is_ok();
        assert!(!schema_ok && !rust_ok, "{mutation:?}: schema accepted={schema_ok}, Rust accepted={rust_ok}");
    }
}

#[test]
fn optional_forms_are_accepted_by_both() {
    let validator = validator();
    let valid = serde_json::to_value(sample(EventKind::Sync, None, None)).unwrap();
    let accepted: Vec<Mutation> = vec![
        ("/requested_at", Some(json!("2026-11-22T07:00:00+01:00"))),
        ("/requested_at", Some(json!("2026-11-22T06:00:00.123456Z"))),
        ("/requested_by", Some(json!("api:alice"))),
        ("/repository/secrets_group", Some(json!("gitlab-deploy-token"))),
        ("/repository/provided_contents", Some(json!([]))),
        ("/repository/remote_url", Some(json!("ssh://git@git.example.com:2222/net/r.git"))),
        ("/repository/remote_url", Some(json!("git://127.0.0.1:9418/r.git"))),
        ("/repository/branch", Some(json!("feature/new-dc"))),
    ];
    for mutation in accepted {
        let doc = apply(valid.clone(), &mutation);
        assert!(validator.is_valid(&doc), "schema refused {mutation:?}");
        assert!(Event::decode(doc.to_string().as_bytes()).is_ok(), "Rust refused {mutation:?}");
    }
}
