//! The create and edit forms of a repository: the command line's own commands, so the rules and their messages
//! are the API's; each message is shown next to its field (record-wide ones above the form).

use std::collections::BTreeMap;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use gitfleet_infra::store::repository;
use gitfleet_shared::loaders::Registry;
use gitfleet_shared::repo::FieldError;

use super::{PageResult, error_page, form_session, html_response, internal, redirect, signed_in_with};
use crate::api::AppState;
use crate::commands::{self, CommandError, NewRepo, RepoChanges};
use crate::tokens::Scope;

/// What the form holds, as typed (so a refused form comes back as it was sent).
#[derive(Debug, Default, Clone)]
pub struct Fields {
    pub name: String,
    pub remote_url: String,
    pub branch: String,
    pub provided_contents: Vec<String>,
    pub secrets_group: String,
    pub git_timeout: String,
    pub sync_interval: String,
}

/// Messages by field (`None`: about the whole record).
pub type Messages = BTreeMap<Option<&'static str>, Vec<String>>;

/// Every data type a repository may provide, for the checkboxes.
pub fn data_types() -> Vec<String> {
    Registry::with_builtins().types().map(|t| t.identifier().to_owned()).collect()
}

impl Fields {
    /// Parses the posted pairs; the CSRF token comes back apart.
    fn from_pairs(pairs: Vec<(String, String)>) -> (Self, String) {
        let mut fields = Self::default();
        let mut csrf = String::new();
        for (key, value) in pairs {
            match key.as_str() {
                "csrf" => csrf = value,
                "name" => fields.name = value,
                "remote_url" => fields.remote_url = value,
                "branch" => fields.branch = value,
                "provided_contents" => fields.provided_contents.push(value),
                "secrets_group" => fields.secrets_group = value,
                "git_timeout" => fields.git_timeout = value,
                "sync_interval" => fields.sync_interval = value,
                _ => {}
            }
        }
        (fields, csrf)
    }

    fn of(repo: &repository::RepositoryRow) -> Self {
        Self {
            name: repo.name.clone(),
            remote_url: repo.remote_url.clone(),
            branch: repo.branch.to_string(),
            provided_contents: repo.provided_contents.clone(),
            secrets_group: repo.secrets_group.clone().unwrap_or_default(),
            git_timeout: repo.git_timeout_secs.map(|s| s.to_string()).unwrap_or_default(),
            sync_interval: repo.sync_interval_secs.map(gitfleet_shared::repo::format_sync_interval).unwrap_or_default(),
        }
    }

    fn optional(value: &str) -> Option<String> {
        Some(value.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// The numbers and durations, or the messages of those that do not parse.
    fn parsed(&self) -> Result<(Option<i32>, Option<i32>), Vec<FieldError>> {
        let mut errors = Vec::new();
        let timeout = match Self::optional(&self.git_timeout) {
            None => None,
            Some(text) => match text.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(FieldError::field("git_timeout", "Enter a whole number."));
                    None
                }
            },
        };
        let interval = match Self::optional(&self.sync_interval) {
            None => None,
            Some(text) => match gitfleet_shared::repo::parse_sync_interval(&text) {
                Ok(n) => Some(n),
                Err(message) => {
                    errors.push(FieldError::field("sync_interval", message));
                    None
                }
            },
        };
        if errors.is_empty() { Ok((timeout, interval)) } else { Err(errors) }
    }
}

fn messages(errors: &[FieldError]) -> Messages {
    let mut by_field = Messages::new();
    for error in errors {
        by_field.entry(error.field).or_default().push(error.message.clone());
    }
    by_field
}

pub async fn new_form(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let session = signed_in_with(&state, &headers, "/ui/new-repository", Scope::Write).await?;
    let fields = Fields { branch: "main".into(), ..Fields::default() };
    Ok(html_response(StatusCode::OK, super::page::repository_form(&session, None, &fields, &Messages::new())))
}

pub async fn edit_form(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> PageResult {
    let here = format!("/ui/repositories/{}/edit", super::page::encode(&name));
    let session = signed_in_with(&state, &headers, &here, Scope::Write).await?;
    let client = state.pool.get().await.map_err(|e| internal(Some(&session), e))?;
    let Some(repo) =
        repository::find_live_by_name(&**client, &name, false).await.map_err(|e| internal(Some(&session), e))?
    else {
        return Err(error_page(Some(&session), StatusCode::NOT_FOUND, "No live repository has that name."));
    };
    let page = super::page::repository_form(&session, Some(&name), &Fields::of(&repo), &Messages::new());
    Ok(html_response(StatusCode::OK, page))
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    save(&state, &headers, pairs, None).await
}

pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    save(&state, &headers, pairs, Some(name)).await
}

/// Creates the repository (`editing`: None) or updates the one named `editing` from the posted form; a refused
/// form comes back with every message next to its field.
async fn save(
    state: &AppState,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
    editing: Option<String>,
) -> Response {
    let (fields, csrf) = Fields::from_pairs(pairs);
    let session = match form_session(state, headers, &csrf, Scope::Write).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let refused = |errors: &[FieldError]| {
        let page = super::page::repository_form(&session, editing.as_deref(), &fields, &messages(errors));
        html_response(StatusCode::BAD_REQUEST, page)
    };
    let ((git_timeout_secs, sync_interval_secs), mut errors) = match fields.parsed() {
        Ok(parsed) => (parsed, Vec::new()),
        Err(errors) => ((None, None), errors),
    };
    let outcome = match &editing {
        None => {
            let new = NewRepo {
                name: fields.name.clone(),
                slug: None,
                remote_url: fields.remote_url.trim().to_owned(),
                branch: Fields::optional(&fields.branch),
                provided_contents: fields.provided_contents.clone(),
                secrets_group: Fields::optional(&fields.secrets_group),
                git_timeout_secs,
                sync_interval_secs,
            };
            // Every message at once, as the API gives them, before anything is recorded.
            errors.extend(commands::check_new(&new));
            if !errors.is_empty() {
                return refused(&errors);
            }
            commands::create(&state.pool, new, session.requested_by()).await
        }
        Some(name) => {
            if !errors.is_empty() {
                return refused(&errors);
            }
            let changes = RepoChanges {
                new_name: Some(fields.name.clone()).filter(|n| n != name),
                slug: None,
                remote_url: Some(fields.remote_url.trim().to_owned()),
                branch: Some(fields.branch.trim().to_owned()),
                provided_contents: Some(fields.provided_contents.clone()),
                secrets_group: Some(Fields::optional(&fields.secrets_group)),
                git_timeout_secs: Some(git_timeout_secs),
                sync_interval_secs: Some(sync_interval_secs),
            };
            commands::update(&state.pool, name, changes, session.requested_by()).await
        }
    };
    match outcome {
        Ok(outcome) => match outcome.job_result_id() {
            Some(id) => redirect(&format!("/ui/job-results/{id}")),
            None => redirect(&format!("/ui/repositories/{}", super::page::encode(&fields.name))),
        },
        Err(CommandError::Invalid(errors)) => refused(&errors),
        Err(CommandError::NotFound(_)) => {
            error_page(Some(&session), StatusCode::NOT_FOUND, "No live repository has that name.")
        }
        Err(err) => internal(Some(&session), err),
    }
}
