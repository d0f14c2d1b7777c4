//! `producer serve` over real HTTP on loopback, against the real services and a worker: every endpoint's success
//! and error cases, with the error shape of the published contract, and the token and scope matrix.

use std::time::Duration;

use anyhow::{Context, Result};
use gitfleet_producer::tokens::{self, Scope};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::git::Remote;

/// A client of the test's server with one token.
struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }
}

async fn api(env: &mut TestEnv, scopes: &[(&str, Scope)]) -> Result<(String, Vec<Api>)> {
    let base = env.start_api().await?;
    let http = Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut clients = Vec::new();
    for (name, scope) in scopes {
        let token = tokens::create(&env.pool, name, &[*scope]).await?.context("token")?;
        clients.push(Api { http: http.clone(), base: base.clone(), token });
    }
    Ok((base, clients))
}

/// Every error body has the one shape: `detail`, and field -> messages.
fn assert_error_shape(body: &Value) {
    let object = body.as_object().expect("an error body is an object");
    assert!(object.get("detail").is_some_and(Value::is_string), "{body}");
    for (key, value) in object.iter().filter(|(k, _)| *k != "detail") {
        assert!(value.as_array().is_some_and(|a| a.iter().all(Value::is_string)), "{key}: {value}");
    }
}

/// Tokens: 401 without one, with a malformed, unknown or revoked one (saying nothing more); 403 for a missing
/// scope; the health probes are open; Nautobot's `Token` scheme works like `Bearer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (base, clients) = api(&mut env, &[("reader", Scope::Read), ("writer", Scope::Write)]).await?;
    let [reader, writer] = clients.try_into().map_err(|_| anyhow::anyhow!("two clients"))?;
    let http = Client::new();
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        assert_eq!(http.get(format!("{base}{path}")).send().await?.status(), StatusCode::OK, "{path}");
    }
    let anonymous = http.get(format!("{base}/api/v1/repositories")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await?;
    assert_error_shape(&body);
    for bad in ["nonsense", "gft_0000000000000000000000000000000000000000000000000000000000000000"] {
        let response = http.get(format!("{base}/api/v1/repositories")).bearer_auth(bad).send().await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.json::<Value>().await?, body, "the same answer whatever the reason");
    }
    let nautobot_style =
        http.get(format!("{base}/api/v1/repositories")).header("Authorization", format!("Token {}", reader.token));
    assert_eq!(nautobot_style.send().await?.status(), StatusCode::OK);

    assert_eq!(reader.get("/api/v1/repositories").await?.0, StatusCode::OK);
    let (status, body) = reader.post("/api/v1/repositories", json!({"name": "x", "remote_url": "file:///x"})).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error_shape(&body);
    assert_eq!(reader.post("/api/v1/repositories/sync", json!({})).await?.0, StatusCode::FORBIDDEN);
    assert_eq!(writer.get("/api/v1/job-results").await?.0, StatusCode::OK, "write includes read");

    let client = env.pool.get().await?;
    gitfleet_infra::store::token::revoke(&**client, "reader").await?;
    drop(client);
    assert_eq!(reader.get("/api/v1/repositories").await?.0, StatusCode::UNAUTHORIZED);
    let stored: String =
        env.pool.get().await?.query_one("SELECT token_hash FROM api_token WHERE name = 'writer'", &[]).await?.get(0);
    assert!(!writer.token.contains(&stored) && stored.len() == 64, "only a hash is stored");
    env.teardown().await
}

/// A repository's life through the API: create (202, `Location`), its JobResult long-polled to SUCCESS, get,
/// list with filters and pages, the records it owns, sync with a target commit, dry-run, sync of all, change,
/// delete; and the refusals: Nautobot's messages keyed by field (400), a taken name (409), unknown names (404),
/// bodies that do not fit (400, 415).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_and_job_results() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let (_, clients) = api(&mut env, &[("ci", Scope::Write)]).await?;
    let api = &clients[0];
    let remote = Remote::new(env.tmp.path(), "api")?;
    let head = remote.commit("one", &[("config_contexts/a.yaml", "_metadata: {name: From API}\nx: 1\n")])?;

    let new =
        json!({"name": "Via API", "remote_url": remote.file_url(), "provided_contents": ["extras.configcontext"]});
    let response =
        api.http.post(format!("{}/api/v1/repositories", api.base)).bearer_auth(&api.token).json(&new).send().await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers().get("location").context("Location")?.to_str()?.to_owned();
    let accepted: Value = response.json().await?;
    assert_eq!(location, format!("/api/v1/job-results/{}", accepted["job_result_id"].as_str().context("id")?));
    let (status, job) = api.get(&format!("{location}?wait=60")).await?;
    assert_eq!((status, job["status"].as_str()), (StatusCode::OK, Some("SUCCESS")), "{job}");
    assert_eq!(job["requested_by"], "api:ci");
    assert!(job["logs"].as_array().is_some_and(|l| !l.is_empty()));
    let (_, errors_only) = api.get(&format!("{location}?level=error")).await?;
    assert_eq!(errors_only["logs"], json!([]));
    assert_eq!(errors_only["log_matching"], 0);
    // The log comes a page at a time, counted among the entries the filters keep.
    let all = job["logs"].as_array().context("logs")?.clone();
    assert_eq!(job["log_matching"], all.len(), "{job}");
    assert!(all.len() >= 4, "{job}");
    let (_, page) = api.get(&format!("{location}?log_offset=1&log_limit=2")).await?;
    assert_eq!(page["logs"], json!(all[1..3]));
    assert_eq!(page["log_matching"], all.len());
    let infos: Vec<&Value> = all.iter().filter(|l| l["level"] == "info").collect();
    let (_, second_info) = api.get(&format!("{location}?level=info&log_offset=1&log_limit=1")).await?;
    assert_eq!(second_info["logs"], json!([infos[1]]));
    assert_eq!(second_info["log_matching"], infos.len());
    for bad in ["log_limit=0", "log_limit=10001", "log_offset=-1"] {
        let (status, body) = api.get(&format!("{location}?{bad}")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_error_shape(&body);
    }

    let (status, repo) = api.get("/api/v1/repositories/Via%20API").await?;
    assert_eq!((status, repo["current_head"].as_str()), (StatusCode::OK, Some(head.as_str())));
    let (_, records) = api.get("/api/v1/repositories/Via%20API/records").await?;
    assert_eq!(records["config_contexts"][0]["name"], "From API");
    assert_eq!(records["commit"], json!(head));
    let (status, body) = api.get("/api/v1/repositories/Via%20API/records?type=extras.nosuch").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body);

    // Refusals.
    let (status, body) = api.post("/api/v1/repositories", new.clone()).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["name"], json!(["Git repository with this Name already exists."]));
    let (status, body) =
        api.post("/api/v1/repositories", json!({"name": "Bad", "remote_url": "ftp://x/y", "branch": "-x"})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error_shape(&body);
    assert_eq!(body["branch"], json!(["Invalid branch '-x': must not start with '-'"]));
    assert!(body["remote_url"].is_array(), "every field's messages at once: {body}");
    let (status, body) =
        api.post("/api/v1/repositories", json!({"name": "Bad", "slug": "sys", "remote_url": "file:///x"})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["slug"][0].as_str().is_some_and(|m| m.starts_with("Please choose a different slug")), "{body}");
    let (status, body) =
        api.post("/api/v1/repositories", json!({"name": "x", "remote_url": "file:///x", "color": 1})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("unknown field `color`")), "{body}");
    let raw = api
        .http
        .post(format!("{}/api/v1/repositories", api.base))
        .bearer_auth(&api.token)
        .body("name=x")
        .send()
        .await?;
    assert_eq!(raw.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(api.get("/api/v1/repositories/Nobody").await?.0, StatusCode::NOT_FOUND);
    assert_eq!(api.post("/api/v1/repositories/Nobody/sync", json!({})).await?.0, StatusCode::NOT_FOUND);
    let (status, body) = api.post("/api/v1/repositories/Via%20API/sync", json!({"target_commit": "xyz"})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["target_commit"].is_array(), "{body}");
    assert_eq!(api.get("/api/v1/job-results/not-a-uuid").await?.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.get(&format!("/api/v1/job-results/{}", uuid::Uuid::new_v4())).await?.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v1/job-results?status=DONE").await?.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/api/v1/repositories?limit=0").await?.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/api/v1/nothing-here").await?.0, StatusCode::NOT_FOUND);

    // Syncs: one repository at a known commit, a dry-run, then every repository (a second one first).
    let second = json!({"name": "Second", "remote_url": remote.file_url(), "provided_contents": []});
    assert_eq!(api.post("/api/v1/repositories", second).await?.0, StatusCode::ACCEPTED);
    let (status, sync) = api.post("/api/v1/repositories/Via%20API/sync", json!({"target_commit": head})).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, done) = api.get(&format!("{}?wait=60", sync["job_result"].as_str().context("link")?)).await?;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    let dry = api.call(Method::POST, "/api/v1/repositories/Via%20API/dry-run", None).await?;
    assert_eq!(dry.0, StatusCode::ACCEPTED);
    let (status, all) = api.post("/api/v1/repositories/sync", json!({"provides": "extras.configcontext"})).await?;
    assert_eq!((status, all["results"].as_array().map(Vec::len)), (StatusCode::ACCEPTED, Some(1)), "{all}");
    let (_, all) = api.call(Method::POST, "/api/v1/repositories/sync", None).await?;
    assert_eq!(all["results"].as_array().map(Vec::len), Some(2));

    // Lists: filters and pages.
    let (_, page) = api.get("/api/v1/repositories?limit=1").await?;
    assert_eq!(page["results"][0]["name"], "Second");
    let next = page["next"].as_str().context("a next page")?.to_owned();
    let (_, page) = api.get(&next).await?;
    assert_eq!((page["results"][0]["name"].as_str(), page["next"].as_str()), (Some("Via API"), None));
    let (_, filtered) = api.get("/api/v1/repositories?provides=extras.configcontext").await?;
    assert_eq!(filtered["results"].as_array().map(Vec::len), Some(1));
    let repo_id = repo["id"].as_str().context("id")?;
    let (_, jobs) = api.get(&format!("/api/v1/job-results?repository={repo_id}&kind=sync&limit=2")).await?;
    assert_eq!(jobs["results"].as_array().map(Vec::len), Some(2), "{jobs}");
    let (_, more) = api.get(jobs["next"].as_str().context("a next page of job results")?).await?;
    let ids = |page: &Value| -> Vec<String> {
        page["results"].as_array().into_iter().flatten().filter_map(|j| j["id"].as_str().map(str::to_owned)).collect()
    };
    assert!(ids(&more).iter().all(|id| !ids(&jobs).contains(id)), "pages do not overlap");
    let (_, created) = api.get(&format!("/api/v1/job-results?repository={repo_id}&kind=create")).await?;
    assert_eq!(created["results"].as_array().map(Vec::len), Some(1));

    // Change, then delete.
    let (status, body) = api.call(Method::PATCH, "/api/v1/repositories/Second", Some(json!({"branch": "a b"}))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["branch"], json!(["Invalid branch 'a b': must not contain whitespace"]));
    let (status, _) = api
        .call(Method::PATCH, "/api/v1/repositories/Second", Some(json!({"name": "Renamed", "secrets_group": null})))
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(api.get("/api/v1/repositories/Renamed").await?.0, StatusCode::OK);
    let (status, deleted) = api.call(Method::DELETE, "/api/v1/repositories/Renamed", None).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, done) = api.get(&format!("{}?wait=60", deleted["job_result"].as_str().context("link")?)).await?;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(api.get("/api/v1/repositories/Renamed").await?.0, StatusCode::NOT_FOUND);
    env.teardown().await
}

/// The inventory (imported in the CLI's file format, counted) and dead letters (listed, replayed once, by an admin
/// token only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_and_dead_letters() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let (_, clients) = api(&mut env, &[("ops", Scope::Write), ("root", Scope::Admin)]).await?;
    let [writer, admin] = clients.try_into().map_err(|_| anyhow::anyhow!("two clients"))?;
    let objects = json!({"objects": [
        {"kind": "location", "id": "l1", "fields": {"name": "DC1"}},
        {"kind": "role", "id": "r1", "fields": {"name": "Leaf"}},
        {"kind": "role", "id": "r2", "fields": {"name": "Spine"}},
    ]});
    assert_eq!(writer.post("/api/v1/inventory", objects).await?, (StatusCode::OK, json!({"imported": 3})));
    assert_eq!(writer.get("/api/v1/inventory").await?.1, json!({"kinds": {"location": 1, "role": 2}}));
    let (status, body) = writer.post("/api/v1/inventory", json!([{"kind": "spaceship", "fields": {}}])).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error_shape(&body);
    let (_, after_replace) = {
        let replace = json!([{"kind": "role", "id": "r3", "fields": {"name": "Border"}}]);
        writer.post("/api/v1/inventory?replace=true", replace).await?;
        writer.get("/api/v1/inventory").await?
    };
    assert_eq!(after_replace, json!({"kinds": {"location": 1, "role": 1}}));

    // A dead letter: an event recorded by the API, as the worker would record it from the dead-letter queue.
    let remote = Remote::new(env.tmp.path(), "dead")?;
    remote.commit("one", &[("README.md", "x")])?;
    let (_, accepted) =
        writer.post("/api/v1/repositories", json!({"name": "Dead", "remote_url": remote.file_url()})).await?;
    let event: uuid::Uuid = accepted["job_result_id"].as_str().context("id")?.parse()?;
    env.pool
        .get()
        .await?
        .execute(
            "INSERT INTO dead_letter (event_id, routing_key, reason, payload)
             SELECT event_id, routing_key, 'delivery limit reached', convert_to(payload::text, 'UTF8') FROM outbox
             WHERE event_id = $1",
            &[&event],
        )
        .await?;
    let (status, letters) = writer.get("/api/v1/dead-letters").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(letters[0]["event_id"], json!(event.to_string()));
    let id = letters[0]["id"].as_i64().context("id")?;
    let path = format!("/api/v1/dead-letters/{id}/replay");
    assert_eq!(writer.call(Method::POST, &path, None).await?.0, StatusCode::FORBIDDEN, "replay is admin only");
    assert_eq!(
        admin.call(Method::POST, &path, None).await?,
        (StatusCode::OK, json!({"replayed": [event.to_string()]}))
    );
    let (status, body) = admin.call(Method::POST, &path, None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(admin.call(Method::POST, "/api/v1/dead-letters/999999/replay", None).await?.0, StatusCode::NOT_FOUND);
    assert_eq!(writer.get("/api/v1/dead-letters").await?.1, json!([]), "replayed letters are listed with all=true");
    assert_eq!(writer.get("/api/v1/dead-letters?all=true").await?.1.as_array().map(Vec::len), Some(1));
    env.teardown().await
}

/// The server publishes the checked-in contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_published_one() -> Result<()> {
    let mut env = TestEnv::new().await?;
    let base = env.start_api().await?;
    let served: Value = reqwest::get(format!("{base}/api/v1/openapi.json")).await?.json().await?;
    let published: Value = serde_json::from_str(include_str!("../../../schemas/openapi.json"))?;
    assert_eq!(served, published);
    env.teardown().await
}
