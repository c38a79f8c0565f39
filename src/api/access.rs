//! Access control and upload admission at the HTTP edge: what each route
//! needs of its caller (`auth::Need`), who the caller is and whether they
//! may (401 with the challenge, or 403), mounts from repositories the
//! caller may not read, and the upload limits (429).

use axum::http::{header, HeaderMap, Method};

use super::error::{ApiError, ErrorCode};
use super::path::Route;
use super::request::{query_pairs, query_param};
use super::App;
use crate::auth::{Action, Caller, Need, Refusal};

/// What a route needs of its caller (see `auth`). Reads need pull, writes
/// push, deletes delete; the catalog, the registry-wide event feed and
/// garbage collection their own; `/v2/` and extension discovery only an
/// authenticated caller.
pub(super) fn need(route: &Route, method: &Method, query: &str) -> Need {
    let on = |repo: &str, action: Action| Need::Repository {
        repo: repo.to_owned(),
        actions: vec![action],
    };
    let by_method = |repo: &str| match *method {
        Method::GET | Method::HEAD => on(repo, Action::Pull),
        Method::DELETE => on(repo, Action::Delete),
        _ => on(repo, Action::Push),
    };
    match route {
        Route::Base => Need::Authenticated,
        Route::Catalog => Need::Catalog,
        Route::Tags { repo } | Route::Referrers { repo, .. } => on(repo.as_str(), Action::Pull),
        Route::Manifest { repo, .. }
        | Route::ManifestInvalidReference { repo, .. }
        | Route::Blob { repo, .. } => by_method(repo.as_str()),
        Route::UploadStart { repo } | Route::Upload { repo, .. } => on(repo.as_str(), Action::Push),
        Route::Extension {
            repo,
            extension,
            component,
            ..
        } => match (extension.as_str(), repo, component.as_str()) {
            ("ferro", Some(repo), "restore") => on(repo.as_str(), Action::Push),
            ("ferro", Some(repo), "history" | "asof") => on(repo.as_str(), Action::Pull),
            ("ferro", None, "events") => match query_param(query, "repo") {
                Some(repo) => on(&repo, Action::Pull),
                None => Need::Everywhere(Action::Pull),
            },
            ("ferro", None, "docs") | ("oci", _, _) => Need::Authenticated,
            // Garbage collection deletes from every repository; and any
            // `_ferro` endpoint not named here is refused to all but those
            // who may do everything, until it is (closed by default).
            ("ferro", None, _) => Need::Everywhere(Action::Delete),
            ("ferro", Some(repo), _) => Need::Repository {
                repo: repo.to_string(),
                actions: Action::ALL.to_vec(),
            },
            // Unknown extensions: answered 404 once authenticated.
            _ => Need::Authenticated,
        },
    }
}

/// `<scheme>://<host>` of the request, for the token realm.
fn origin(app: &App, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if app.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// The 401 or 403 for a refusal.
fn refuse(app: &App, need: &Need, refusal: Refusal, headers: &HeaderMap) -> ApiError {
    let reason = match refusal {
        Refusal::Unauthenticated => "unauthenticated",
        Refusal::BadCredentials => "bad_credentials",
        Refusal::InvalidToken => "invalid_token",
        Refusal::InsufficientScope => "insufficient_scope",
        Refusal::Denied => "denied",
    };
    metrics::counter!(crate::metrics::AUTH_REFUSALS, "reason" => reason).increment(1);
    let detail = match need {
        Need::Repository { repo, actions } => serde_json::Value::Array(
            actions
                .iter()
                .map(|a| serde_json::json!({"Type": "repository", "Name": repo, "Action": a.as_str()}))
                .collect(),
        ),
        Need::Catalog | Need::Everywhere(_) => {
            serde_json::json!([{"Type": "registry", "Name": "catalog", "Action": "*"}])
        }
        Need::Authenticated => serde_json::Value::Null,
    };
    if refusal == Refusal::Denied {
        return ApiError::new(ErrorCode::Denied, refusal.message()).with_detail(detail);
    }
    let challenge = app.auth.challenge(need, refusal, &origin(app, headers));
    ApiError::new(ErrorCode::Unauthorized, refusal.message())
        .with_detail(detail)
        .with_header(header::WWW_AUTHENTICATE, &challenge)
}

/// Who the caller is and whether they may: the caller, or the refusal.
pub(super) async fn authorize(
    app: &App,
    route: &Route,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    if !app.auth.enabled() {
        return Ok(Caller::anonymous());
    }
    let need = need(route, method, query);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app
        .auth
        .identify(authorization)
        .await
        .map_err(|r| refuse(app, &need, r, headers))?;
    app.auth
        .check(&caller, &need)
        .map_err(|r| refuse(app, &need, r, headers))?;
    Ok(caller)
}

/// A cross-repository mount reads the source: without pull there (or,
/// for a mount without `from`, on every repository), the mount part of
/// the query is dropped and the request opens an ordinary upload session,
/// as the spec allows.
pub(super) fn without_unreadable_mount(app: &App, caller: &Caller, query: &str) -> Option<String> {
    if !app.auth.enabled() || query_param(query, "mount").is_none() {
        return None;
    }
    let readable = match query_param(query, "from") {
        Some(from) => app.auth.permits(caller, &from, Action::Pull),
        None => app.auth.everywhere(caller, Action::Pull),
    };
    if readable {
        return None;
    }
    let kept: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            query_pairs(query)
                .into_iter()
                .filter(|(k, _)| k != "mount" && k != "from"),
        )
        .finish();
    Some(kept)
}

/// Upload limits: requests carrying bytes take a permit (429 when none is
/// left); a POST that opens a session is refused when too many are open.
pub(super) fn upload_admission(
    app: &App,
    route: &Route,
    method: &Method,
    query: &str,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    let too_many = |what: String| ApiError::new(ErrorCode::TooManyRequests, what);
    let carries_bytes = match (route, method) {
        (Route::UploadStart { .. }, &Method::POST) => query_param(query, "digest").is_some(),
        (Route::Upload { .. }, &Method::PATCH | &Method::PUT) => true,
        _ => false,
    };
    if carries_bytes {
        return match app.upload_permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(too_many(format!(
                "more than {} uploads at once; retry later",
                app.limits.uploads_concurrent_max
            ))),
        };
    }
    // A mount may fall back to opening a session, so it counts too.
    let opens_session = matches!((route, method), (Route::UploadStart { .. }, &Method::POST))
        && query_param(query, "digest").is_none();
    if opens_session && app.state.read().uploads.len() >= app.limits.upload_sessions_max {
        return Err(too_many(format!(
            "{} upload sessions are open; finish or cancel some",
            app.limits.upload_sessions_max
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn needs_by_route() {
        let repo = || crate::oci::RepoName::parse("a/b").expect("valid");
        let pull = Need::Repository {
            repo: "a/b".into(),
            actions: vec![Action::Pull],
        };
        let tags = Route::Tags { repo: repo() };
        assert_eq!(need(&tags, &Method::GET, ""), pull);
        assert_eq!(need(&Route::Base, &Method::GET, ""), Need::Authenticated);
        assert_eq!(need(&Route::Catalog, &Method::GET, ""), Need::Catalog);
        let upload = Route::UploadStart { repo: repo() };
        assert!(matches!(
            need(&upload, &Method::POST, ""),
            Need::Repository { actions, .. } if actions == [Action::Push]
        ));
        let feed = |query: &str| {
            need(
                &Route::Extension {
                    repo: None,
                    extension: "ferro".into(),
                    component: "events".into(),
                    module: "feed".into(),
                },
                &Method::GET,
                query,
            )
        };
        assert_eq!(feed(""), Need::Everywhere(Action::Pull));
        let gc = Route::Extension {
            repo: None,
            extension: "ferro".into(),
            component: "gc".into(),
            module: "run".into(),
        };
        assert_eq!(
            need(&gc, &Method::POST, ""),
            Need::Everywhere(Action::Delete)
        );
        assert_eq!(feed("repo=a/b"), pull);
        // Notification endpoints show and move every repository's events.
        let notifications = Route::Extension {
            repo: None,
            extension: "ferro".into(),
            component: "notifications".into(),
            module: String::new(),
        };
        for method in [Method::GET, Method::POST] {
            assert_eq!(
                need(&notifications, &method, "endpoint=ci&to=end"),
                Need::Everywhere(Action::Delete)
            );
        }
    }
}
