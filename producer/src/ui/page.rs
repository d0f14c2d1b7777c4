//! The UI's HTML: one layout, the pages, and the stylesheet and script they link. Every value from a repository
//! or a request goes through maud's escaping; controls have labels; status is a word as well as a colour; times
//! are UTC in the page (with the UTC value as their title) and shown in the viewer's zone by `ui.js` when it runs.

use chrono::{DateTime, Utc};
use gitfleet_infra::store::dead_letter::DeadLetter;
use gitfleet_infra::store::gauges::FleetGauges;
use gitfleet_infra::store::job_result::{JobResultView, LogView};
use gitfleet_infra::store::repository::RepositoryRow;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::forms::{Fields, Messages, data_types};
use super::session::Session;
use super::{RepoRow, WorkerSeen};
use crate::tokens::Scope;

pub const CSS: &str = include_str!("ui.css");
/// Records of one data type listed on a repository's page (a repository of 100,000 files stays readable).
pub const RECORDS_LISTED: usize = 500;
/// Repositories per page of the list.
pub const REPOSITORIES_PAGE: i64 = 100;
pub const JS: &str = include_str!("ui.js");
pub const FAVICON: &str = include_str!("favicon.svg");

/// Percent-encodes a path segment or query value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A page: its title and who is signed in.
pub struct Page<'a> {
    title: &'a str,
    session: Option<&'a Session>,
    /// Seconds after which the page reloads itself (a running job), if any.
    refresh: Option<u32>,
}

impl<'a> Page<'a> {
    pub fn new(title: &'a str, session: Option<&'a Session>) -> Self {
        Self { title, session, refresh: None }
    }

    pub fn render(&self, body: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    @if let Some(seconds) = self.refresh {
                        meta http-equiv="refresh" content=(seconds);
                    }
                    title { (self.title) " · gitfleet" }
                    link rel="stylesheet" href="/ui/static/ui.css";
                    link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml";
                    script src="/ui/static/ui.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header {
                        nav aria-label="Main" {
                            a.brand href="/ui/repositories" { "gitfleet" }
                            @if let Some(session) = self.session {
                                a href="/ui/repositories" { "Repositories" }
                                a href="/ui/fleet" { "Fleet" }
                                span.who { "Signed in as " strong { (session.token_name) } " (" (session.scope.as_str()) ")" }
                                form.inline method="post" action="/ui/sign-out" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main #main {
                        h1 { (self.title) }
                        (body)
                    }
                }
            }
        }
    }
}

/// A time: UTC in the page, the viewer's zone once `ui.js` runs, the UTC value on hover.
pub fn time(at: DateTime<Utc>) -> Markup {
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) title=(utc) { (utc) } }
}

fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "—" },
    }
}

/// A JobResult status: a word, with a colour beside it.
pub fn status_badge(status: &str) -> Markup {
    let class = match status {
        "SUCCESS" => "ok",
        "FAILURE" => "bad",
        "STARTED" => "run",
        _ => "wait",
    };
    html! { span class={ "badge " (class) } { (status) } }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

pub fn sign_in(next: &str, error: Option<&str>) -> Markup {
    Page::new("Sign in", None).render(html! {
        p { "Sign in with an API token (" code { "producer token create" } "). The token is exchanged for a session; "
            "what its scope allows is what you can do here." }
        form.card method="post" action="/ui/sign-in" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="current-password" required
                aria-describedby=[error.map(|_| "token-error")];
            @if let Some(error) = error {
                p #token-error .error role="alert" { (error) }
            }
            button type="submit" { "Sign in" }
        }
    })
}

/// Which page of the repositories list is shown: its number (from 1), and whether another follows.
pub struct ListPage<'a> {
    pub filter: &'a str,
    pub sort: Option<&'a str>,
    pub page: i64,
    pub more: bool,
}

pub fn repositories(session: &Session, repos: &[RepoRow], list: &ListPage<'_>) -> Markup {
    let (filter, sort) = (list.filter, list.sort);
    let link = |page: i64| {
        format!("/ui/repositories?q={}&sort={}&page={page}", encode(filter), encode(sort.unwrap_or("name")))
    };
    Page::new("Repositories", Some(session)).render(html! {
        @if session.can(Scope::Write) {
            div.actions { a.button href="/ui/new-repository" { "New repository" } }
        }
        form.filters method="get" action="/ui/repositories" role="search" {
            label for="q" { "Filter" }
            input #q type="search" name="q" value=(filter) placeholder="name, remote or branch";
            label for="sort" { "Sort by" }
            select #sort name="sort" {
                @for (value, label) in [("name", "name"), ("status", "last status"), ("age", "last run, newest first")] {
                    option value=(value) selected[sort == Some(value)] { (label) }
                }
            }
            button type="submit" { "Apply" }
        }
        @if repos.is_empty() {
            p { "No live repository matches." }
        } @else {
            div.scroll tabindex="0" role="region" aria-label="Repositories" {
                table {
                    caption { "Repositories " ((list.page - 1) * REPOSITORIES_PAGE + 1) " to " ((list.page - 1) * REPOSITORIES_PAGE + repos.len() as i64) }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Remote" } th scope="col" { "Branch" }
                        th scope="col" { "Live commit" } th scope="col" { "Last JobResult" } th scope="col" { "Records" }
                    } }
                    tbody {
                        @for repo in repos {
                            tr {
                                td { a href={ "/ui/repositories/" (encode(&repo.name)) } { (repo.name) } }
                                td.url { (repo.remote_url) }
                                td { (repo.branch) }
                                td { @match &repo.current_head { Some(c) => code { (short(c)) }, None => "never synced" } }
                                td {
                                    @match &repo.last_status { Some(s) => (status_badge(s)), None => "—" }
                                    " " (maybe_time(repo.last_done))
                                }
                                td { @for (kind, n) in &repo.records { @if *n > 0 { span.count { (n) " " (kind) } " " } } }
                            }
                        }
                    }
                }
            }
        }
        nav.pages aria-label="Repository pages" {
            @if list.page > 1 { a href=(link(list.page - 1)) rel="prev" { "Previous page" } }
            @if list.more { a href=(link(list.page + 1)) rel="next" { "Next page" } }
        }
    })
}

pub fn repository(session: &Session, repo: &RepositoryRow, records: &Value, results: &[JobResultView]) -> Markup {
    let name = encode(&repo.name);
    Page::new(&repo.name, Some(session)).render(html! {
        @if session.can(Scope::Write) {
            div.actions {
                form.inline method="post" action={ "/ui/repositories/" (name) "/sync" } {
                    (csrf_field(session)) button type="submit" { "Sync" }
                }
                form.inline method="post" action={ "/ui/repositories/" (name) "/dry-run" } {
                    (csrf_field(session)) button type="submit" { "Dry-run" }
                }
                a.button href={ "/ui/repositories/" (name) "/edit" } { "Edit" }
                a.button.danger href={ "/ui/repositories/" (name) "/delete" } { "Delete" }
            }
        }
        section aria-labelledby="definition" {
            h2 #definition { "Definition" }
            dl {
                dt { "Remote URL" } dd.url { (repo.remote_url) }
                dt { "Branch" } dd { (repo.branch) }
                dt { "Provides" } dd { (repo.provided_contents.join(", ")) }
                dt { "Secrets group" } dd { (repo.secrets_group.as_deref().unwrap_or("none")) }
                dt { "Polled every" } dd { @match repo.sync_interval_secs { Some(s) => { (s) " s" }, None => "not polled" } }
                dt { "Live commit" } dd { @match &repo.current_head { Some(c) => code { (c.as_str()) }, None => "never synced" } }
                dt { "Applied" } dd { "version " (repo.applied_version) " of " (repo.version) ", fetched " (maybe_time(repo.fetched_at)) }
            }
        }
        section aria-labelledby="records" {
            h2 #records { "Records" }
            @if let Value::Object(types) = records {
                @for (data_type, list) in types {
                    @if let Value::Array(items) = list {
                        @if !items.is_empty() {
                            details {
                                summary { (data_type) ": " (items.len()) }
                                ul {
                                    @for (i, item) in items.iter().enumerate().take(RECORDS_LISTED) {
                                        li { a href={ "/ui/repositories/" (name) "/records/" (encode(data_type)) "/" (i) } {
                                            (record_label(item, i))
                                        } }
                                    }
                                }
                                @if items.len() > RECORDS_LISTED {
                                    p { "The first " (RECORDS_LISTED) " of " (items.len()) " are listed; "
                                        code { "producer repo records" } " lists them all." }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="results" {
            h2 #results { "JobResults" }
            (results_table(results))
        }
    })
}

fn record_label(item: &Value, index: usize) -> String {
    ["name", "path", "module_name", "class_name"]
        .iter()
        .find_map(|k| item.get(*k).and_then(Value::as_str))
        .map_or_else(|| format!("record {}", index + 1), str::to_owned)
}

fn results_table(results: &[JobResultView]) -> Markup {
    html! {
        @if results.is_empty() { p { "None yet." } } @else {
            div.scroll tabindex="0" role="region" aria-label="JobResults" { table {
                thead { tr { th scope="col" { "Created" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Requested by" } } }
                tbody { @for r in results { tr {
                    td { a href={ "/ui/job-results/" (r.id) } { (time(r.date_created)) } }
                    td { (r.event_kind.as_deref().unwrap_or("—")) }
                    td { (status_badge(&r.status)) }
                    td { (r.requested_by.as_deref().unwrap_or("—")) }
                } } }
            } }
        }
    }
}

pub fn record(session: &Session, repo: &str, data_type: &str, record: &Value) -> Markup {
    let pretty = serde_json::to_string_pretty(record).unwrap_or_default();
    let title = format!("{data_type} of {repo}");
    Page::new(&title, Some(session)).render(html! {
        p { a href={ "/ui/repositories/" (encode(repo)) } { "Back to " (repo) } }
        pre.json tabindex="0" aria-label="The record as JSON" { (pretty) }
    })
}

pub fn confirm_delete(session: &Session, name: &str) -> Markup {
    Page::new("Delete a repository", Some(session)).render(html! {
        p { "Delete " strong { (name) } "? Its records and stored files are removed by the next worker to run the event." }
        form method="post" action={ "/ui/repositories/" (encode(name)) "/delete" } {
            (csrf_field(session))
            button.danger type="submit" { "Delete " (name) }
            " " a href={ "/ui/repositories/" (encode(name)) } { "Cancel" }
        }
    })
}

/// One page of a JobResult's log.
pub struct LogPage<'a> {
    pub level: Option<&'a str>,
    pub page: i64,
    pub per_page: i64,
    pub matching: i64,
    pub entries: &'a [LogView],
}

pub fn job_result(session: &Session, view: &JobResultView, log: &LogPage<'_>) -> Markup {
    let running = matches!(view.status.as_str(), "PENDING" | "STARTED");
    let title = format!("JobResult {}", view.id);
    let mut page = Page::new(&title, Some(session));
    if running {
        // Without JavaScript the page follows the job by reloading until it ends.
        page.refresh = Some(2);
    }
    let pages = ((log.matching + log.per_page - 1) / log.per_page).max(1);
    let link = |level: Option<&str>, number: i64| {
        let mut href = format!("/ui/job-results/{}?page={number}", view.id);
        if let Some(level) = level {
            href.push_str("&level=");
            href.push_str(level);
        }
        href
    };
    page.render(html! {
        dl {
            dt { "Repository" } dd { (view.name) }
            dt { "Status" } dd #status { (status_badge(&view.status)) @if running { " (this page reloads until the job ends)" } }
            dt { "Kind" } dd { (view.event_kind.as_deref().unwrap_or("—")) }
            dt { "Created" } dd { (time(view.date_created)) }
            dt { "Started" } dd { (maybe_time(view.date_started)) }
            dt { "Done" } dd { (maybe_time(view.date_done)) }
            dt { "Worker" } dd { (view.worker.as_deref().unwrap_or("—")) }
            dt { "Requested by" } dd { (view.requested_by.as_deref().unwrap_or("—")) }
            dt { "Trace id" } dd { @match &view.trace_id { Some(t) => code { (t) }, None => "—" } }
        }
        section aria-labelledby="log" {
            h2 #log { "Log" }
            form.filters method="get" action={ "/ui/job-results/" (view.id) } {
                label for="level" { "Level" }
                select #level name="level" {
                    option value="" selected[log.level.is_none()] { "all" }
                    @for level in ["debug", "info", "success", "warning", "failure", "error"] {
                        option value=(level) selected[log.level == Some(level)] { (level) }
                    }
                }
                button type="submit" { "Filter" }
            }
            p { (log.matching) " entries" @if let Some(level) = log.level { " at level " (level) } "; page " (log.page) " of " (pages) "." }
            div.scroll tabindex="0" role="region" aria-label="Log entries" { table.log {
                thead { tr { th scope="col" { "Time" } th scope="col" { "Level" } th scope="col" { "Grouping" } th scope="col" { "Message" } } }
                tbody { @for entry in log.entries { tr class={ "level-" (entry.level) } {
                    td { (time(entry.created)) }
                    td { span class={ "level " (entry.level) } { (entry.level) } }
                    td { (entry.grouping) }
                    td.message { (entry.message) }
                } } }
            } }
            nav.pages aria-label="Log pages" {
                @if log.page > 1 { a href=(link(log.level, log.page - 1)) rel="prev" { "Previous page" } }
                @if log.page < pages { a href=(link(log.level, log.page + 1)) rel="next" { "Next page" } }
            }
        }
    })
}

/// What the fleet page shows.
pub struct FleetView<'a> {
    pub gauges: &'a FleetGauges,
    pub pending: i64,
    pub workers: &'a [WorkerSeen],
    pub letters: &'a [DeadLetter],
    /// The queues by role, or why the broker could not be read.
    pub queues: &'a Result<Vec<crate::relay::QueueDepth>, String>,
}

pub fn fleet(session: &Session, view: &FleetView<'_>) -> Markup {
    let (gauges, pending, workers, letters) = (view.gauges, view.pending, view.workers, view.letters);
    Page::new("Fleet", Some(session)).render(html! {
        section aria-labelledby="backlog" {
            h2 #backlog { "Backlog" }
            dl {
                dt { "Events waiting for a worker" } dd { (pending) }
                dt { "Jobs running" } dd { (gauges.started) }
                dt { "Outbox rows not yet published" } dd { (gauges.outbox_backlog) @if gauges.outbox_backlog > 0 { ", the oldest " (format!("{:.0}", gauges.outbox_oldest_age_secs)) " s old" } }
                dt { "Dead letters not replayed" } dd { (gauges.dead_letters) }
            }
        }
        section aria-labelledby="queues" {
            h2 #queues { "Queues" }
            @match view.queues {
                Ok(depths) => {
                    div.scroll tabindex="0" role="region" aria-label="Queues" { table {
                        thead { tr { th scope="col" { "Queue" } th scope="col" { "Ready messages" } th scope="col" { "Consumers" } } }
                        tbody { @for d in depths { tr { td { (d.role) } td { (d.messages) } td { (d.consumers) } } } }
                    } }
                }
                Err(why) => p { "The broker's queues cannot be read now: " (why) "." }
            }
        }
        section aria-labelledby="workers" {
            h2 #workers { "Workers seen in the last hour" }
            @if workers.is_empty() { p { "None." } } @else {
                div.scroll tabindex="0" role="region" aria-label="Workers" { table {
                    thead { tr { th scope="col" { "Worker" } th scope="col" { "Last seen" } th scope="col" { "Running now" } } }
                    tbody { @for w in workers { tr { td { (w.name) } td { (time(w.last_seen)) } td { (w.running) } } } }
                } }
            }
        }
        section aria-labelledby="dead-letters" {
            h2 #dead-letters { "Dead letters" }
            @if letters.is_empty() { p { "None waiting." } } @else {
                div.scroll tabindex="0" role="region" aria-label="Dead letters" { table {
                    thead { tr { th scope="col" { "Number" } th scope="col" { "Received" } th scope="col" { "Routing key" } th scope="col" { "Reason" }
                        @if session.can(Scope::Admin) { th scope="col" { "Action" } } } }
                    tbody { @for d in letters { tr {
                        td { (d.id) } td { (time(d.received_at)) } td { code { (d.routing_key) } } td.message { (d.reason) }
                        @if session.can(Scope::Admin) { td {
                            form.inline method="post" action={ "/ui/dead-letters/" (d.id) "/replay" } {
                                (csrf_field(session))
                                button type="submit" aria-label={ "Replay dead letter " (d.id) } { "Replay" }
                            }
                        } }
                    } } }
                } }
            }
        }
    })
}

/// The create form (`editing`: None) or the edit form of the repository named `editing`.
pub fn repository_form(session: &Session, editing: Option<&str>, fields: &Fields, messages: &Messages) -> Markup {
    let title = match editing {
        Some(name) => format!("Edit {name}"),
        None => "New repository".to_owned(),
    };
    let action = match editing {
        Some(name) => format!("/ui/repositories/{}/edit", encode(name)),
        None => "/ui/new-repository".to_owned(),
    };
    let errors_of = |field: &'static str| messages.get(&Some(field)).cloned().unwrap_or_default();
    let text = |field: &'static str, label: &str, value: &str, help: &str, required: bool| {
        let errors = errors_of(field);
        let error_id = format!("{field}-errors");
        let help_id = format!("{field}-help");
        let described = if errors.is_empty() { help_id.clone() } else { format!("{help_id} {error_id}") };
        html! {
            div.field {
                label for=(field) { (label) }
                input id=(field) name=(field) type="text" value=(value) required[required]
                    aria-invalid=[(!errors.is_empty()).then_some("true")] aria-describedby=(described);
                small id=(help_id) { (help) }
                @if !errors.is_empty() {
                    ul.error id=(error_id) role="alert" { @for e in &errors { li { (e) } } }
                }
            }
        }
    };
    let provided_errors = errors_of("provided_contents");
    Page::new(&title, Some(session)).render(html! {
        @if let Some(general) = messages.get(&None) {
            ul.error role="alert" { @for e in general { li { (e) } } }
        }
        form.card method="post" action=(action) novalidate {
            (csrf_field(session))
            (text("name", "Name", &fields.name, "Unique among live repositories.", true))
            (text("remote_url", "Remote URL", &fields.remote_url, "http(s), ssh or git URL; never a token in it.", true))
            (text("branch", "Branch", &fields.branch, "Branch, tag or commit to sync; default main.", false))
            fieldset aria-describedby=[(!provided_errors.is_empty()).then_some("provided_contents-errors")] {
                legend { "Provides" }
                @for data_type in data_types() {
                    @let id = format!("provides-{}", data_type.replace('.', "-"));
                    div {
                        input id=(id) type="checkbox" name="provided_contents" value=(data_type)
                            checked[fields.provided_contents.contains(&data_type)];
                        label for=(id) { (data_type) }
                    }
                }
                @if !provided_errors.is_empty() {
                    ul.error id="provided_contents-errors" role="alert" { @for e in &provided_errors { li { (e) } } }
                }
            }
            (text("secrets_group", "Secrets group", &fields.secrets_group, "The worker's group holding the credentials; empty: none.", false))
            (text("git_timeout", "Git timeout (seconds)", &fields.git_timeout, "1 to 86400; empty: the worker's default.", false))
            (text("sync_interval", "Poll every", &fields.sync_interval, "A duration such as 5m or 1h, at least 10s; empty: no polling.", false))
            button type="submit" { @if editing.is_some() { "Save" } @else { "Create" } }
        }
    })
}
