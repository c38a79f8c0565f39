//! The web UI at `/ui/`: server-rendered pages (maud templates, escaped by
//! default) over the same readers as the API — the projection, history,
//! reads as of a point, restore and garbage collection — never the log
//! itself. A little JavaScript (`assets/ui.js`) only enhances: copy
//! buttons, relative times, the live event list.
//!
//! | method | path                         | page |
//! |--------|------------------------------|------|
//! | GET    | /                            | 303 to /ui/ for browsers |
//! | GET    | /ui/                         | overview (`pages::overview`) |
//! | GET    | /ui/events?after=N           | the live event list's long-poll (JSON) |
//! | GET    | /ui/repositories             | repositories, search, sort, pages |
//! | GET    | /ui/r/<name>                 | a repository: tags, referrers, pull commands |
//! | GET    | /ui/r/<name>/-/manifest/<d>  | a manifest |
//! | GET    | /ui/r/<name>/-/history[?tag=]| a repository's or a tag's timeline |
//! | GET    | /ui/r/<name>/-/diff?from=&to=| two versions compared |
//! | GET    | /ui/r/<name>/-/restore, /-/delete | the confirmation pages |
//! | POST   | /ui/r/<name>/-/restore, /-/delete | the writes, through the API's commands |
//! | GET    | /ui/asof?at=                 | the registry as it was |
//! | GET    | /ui/admin, POST /ui/admin/gc | garbage collection |
//! | GET/POST | /ui/login, POST /ui/logout | sessions (`session`) |
//! | GET    | /ui/static/<file>            | the stylesheet and script, from the binary |
//!
//! Every browse page takes `at=SEQ|RFC3339` and then shows the past,
//! marked as such, with no write controls. Access is the registry's own
//! (`auth`): a page shows what the caller may pull; a control shows only
//! where they may write, and the POST checks again.

mod pages;
pub mod session;
pub mod timeline;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;

use super::request::{query_param, RequestContext};
use super::App;
use crate::auth::{Action, Caller};
use crate::config::UiConfig;
use crate::oci::RepoName;
use crate::projection::State as RegistryState;

/// Largest form body the UI reads.
const FORM_BYTES_MAX: usize = 16 * 1024;

/// The UI's part of the server: its settings, sessions and timeline.
pub struct Ui {
    pub enabled: bool,
    /// Whether the UI may write at all (restore, delete, collect): not on
    /// a past state, and with auth off only on loopback or when allowed.
    pub writes: bool,
    pub sessions: Arc<session::Sessions>,
    pub timeline: timeline::Timeline,
}

impl Ui {
    /// `loopback`: whether the listener is on a loopback address.
    pub fn new(c: &UiConfig, auth_enabled: bool, read_only: bool, loopback: bool) -> Ui {
        Ui {
            enabled: c.enabled,
            writes: !read_only && (auth_enabled || loopback || c.allow_writes_without_auth),
            sessions: Arc::new(session::Sessions::new(
                Duration::from_secs(c.session_lifetime_secs),
                c.sessions_max,
            )),
            timeline: timeline::Timeline::default(),
        }
    }
}

/// The UI's routes, merged into the registry's router when enabled.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", any(root))
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(pages::overview::get))
        .route("/ui/events", get(pages::overview::events))
        .route("/ui/repositories", get(pages::repositories::get))
        .route("/ui/asof", get(pages::repositories::asof))
        .route("/ui/r/{*rest}", get(repo_get).post(repo_post))
        .route("/ui/admin", get(pages::admin::get))
        .route("/ui/admin/gc", post(pages::admin::gc))
        .route("/ui/login", get(pages::login::get).post(pages::login::post))
        .route("/ui/logout", post(pages::login::logout))
        .route("/ui/static/{file}", get(asset))
}

/// `/`: browsers go to the UI; anything else (another method, a client
/// that does not ask for HTML) gets the 404 it always got.
async fn root(method: axum::http::Method, headers: HeaderMap) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if html && matches!(method, axum::http::Method::GET | axum::http::Method::HEAD) {
        redirect("/ui/")
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match file.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "ui.js" => (
            include_str!("assets/ui.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// `/ui/r/<name>[/-/<page>[/<arg>]]`: repository names have slashes, and
/// a path component of a name is never `-`.
fn split_repo_path(rest: &str) -> Result<(RepoName, &str, &str), UiError> {
    let (name, page) = match rest.find("/-/") {
        Some(i) => (&rest[..i], &rest[i + 3..]),
        None => (rest.trim_end_matches('/'), ""),
    };
    let repo = RepoName::parse(name).map_err(|_| UiError::not_found("no such repository"))?;
    let (page, arg) = page.split_once('/').unwrap_or((page, ""));
    Ok((repo, page, arg))
}

async fn repo_get(
    State(app): State<Arc<App>>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let served = async {
        let (repo, page, arg) = split_repo_path(&rest)?;
        let viewer = Viewer::of(&app, &headers, &format!("/ui/r/{rest}")).await?;
        if !viewer.sees(&app, repo.as_str()) {
            return Err(UiError::not_found("no such repository"));
        }
        match (page, arg) {
            ("", "") => pages::repository::get(&app, &viewer, &repo, &query, &headers).await,
            ("manifest", digest) => {
                pages::manifest::get(&app, &viewer, &repo, digest, &query).await
            }
            ("history", "") => pages::history::get(&app, &viewer, &repo, &query).await,
            ("diff", "") => pages::history::diff(&app, &viewer, &repo, &query).await,
            ("restore", "") => pages::history::confirm_restore(&app, &viewer, &repo, &query),
            ("delete", "") => pages::admin::confirm_delete(&app, &viewer, &repo, &query),
            _ => Err(UiError::not_found("no such page")),
        }
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

async fn repo_post(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let served = async {
        let (repo, page, _) = split_repo_path(&rest)?;
        let viewer = Viewer::of(&app, &headers, &format!("/ui/r/{rest}")).await?;
        let form = viewer.form(body).await?;
        let ctx = viewer.request_context(peer);
        match page {
            "restore" => pages::history::restore(&app, &viewer, &ctx, repo, &form).await,
            "delete" => pages::admin::delete(&app, &viewer, &ctx, repo, &form).await,
            _ => Err(UiError::not_found("no such page")),
        }
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

/// A page that could not be shown: its status and a sentence, rendered as
/// a small page (or a redirect to the login).
#[derive(Debug)]
pub enum UiError {
    Page { status: StatusCode, message: String },
    Login { next: String },
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError::Page {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: &str) -> UiError {
        UiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: &str) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn bad_request(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<super::error::ApiError> for UiError {
    fn from(e: super::error::ApiError) -> UiError {
        UiError::new(e.status, e.message)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Login { next } => {
                let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
                redirect(&format!("/ui/login?next={next}"))
            }
            UiError::Page { status, message } => {
                (status, view::html(view::error_page(status, &message))).into_response()
            }
        }
    }
}

pub type UiResult = Result<Response, UiError>;

/// Who is looking, what they may do, and their session's CSRF token.
///
/// A session is made only when a page needs a token (it has a form) and
/// the browser has none: reading pages with auth off costs no session.
pub struct Viewer {
    pub caller: Caller,
    pub user: Option<String>,
    /// The session the request's cookie names, if live.
    found: Option<(String, session::Session)>,
    /// The session made for this request's forms, if one was needed.
    made: std::sync::OnceLock<session::Current>,
    sessions: Arc<session::Sessions>,
    secure: bool,
    /// Whether writes are possible in this UI at all (`Ui::writes`).
    writes: bool,
    auth_enabled: bool,
    started: Instant,
}

/// A read form: its fields, CSRF checked.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn required(&self, key: &str) -> Result<&str, UiError> {
        self.get(key)
            .ok_or_else(|| UiError::bad_request(format!("the form lacks {key}")))
    }
}

impl Viewer {
    /// The viewer of a request to `path`: with auth on, one who has not
    /// logged in is sent to the login page.
    pub async fn of(app: &App, headers: &HeaderMap, path: &str) -> Result<Viewer, UiError> {
        let viewer = Viewer::anyone(app, headers);
        if viewer.auth_enabled && viewer.user.is_none() {
            return Err(UiError::Login {
                next: path.to_owned(),
            });
        }
        Ok(viewer)
    }

    /// The viewer whether logged in or not (the login page's).
    pub fn anyone(app: &App, headers: &HeaderMap) -> Viewer {
        let found = app.ui.sessions.find(headers);
        let user = found
            .as_ref()
            .and_then(|(_, s)| s.user.clone())
            .filter(|_| app.auth.enabled());
        Viewer {
            caller: match &user {
                Some(u) => Caller::logged_in(u),
                None => Caller::anonymous(),
            },
            user,
            found,
            made: std::sync::OnceLock::new(),
            sessions: app.ui.sessions.clone(),
            secure: app.tls,
            writes: app.ui.writes,
            auth_enabled: app.auth.enabled(),
            started: Instant::now(),
        }
    }

    /// The session's CSRF token, making the session if there is none.
    pub fn csrf(&self) -> &str {
        match &self.found {
            Some((_, s)) => &s.csrf,
            None => {
                &self
                    .made
                    .get_or_init(|| self.sessions.create(None, self.secure))
                    .session
                    .csrf
            }
        }
    }

    /// The session's token, if the request came with one.
    pub fn token(&self) -> Option<&str> {
        self.found.as_ref().map(|(t, _)| t.as_str())
    }

    pub fn sees(&self, app: &App, repo: &str) -> bool {
        app.auth.lists(&self.caller, repo)
    }

    /// Whether the viewer may `action` on `repo` from the UI now.
    pub fn may(&self, app: &App, repo: &str, action: Action) -> bool {
        self.writes
            && (action != Action::Delete || app.delete_enabled)
            && app.auth.permits(&self.caller, repo, action)
    }

    /// Whether the administration page is theirs (delete on `**`).
    pub fn admin(&self, app: &App) -> bool {
        app.auth.everywhere(&self.caller, Action::Delete)
    }

    pub fn writes(&self) -> bool {
        self.writes
    }

    pub fn request_context(&self, peer: SocketAddr) -> RequestContext {
        RequestContext {
            user: self.user.clone(),
            peer,
            sendfile: None,
        }
    }

    /// Reads a form body and checks its CSRF token.
    pub async fn form(&self, body: Body) -> Result<Form, UiError> {
        let bytes = axum::body::to_bytes(body, FORM_BYTES_MAX)
            .await
            .map_err(|_| UiError::bad_request("the form is too large or incomplete"))?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        let token = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let expected = self.found.as_ref().map(|(_, s)| s.csrf.as_str());
        if !expected.is_some_and(|e| session::same_token(token, e)) {
            return Err(UiError::forbidden(
                "the form's token does not match this session; reload the page and try again",
            ));
        }
        Ok(Form(fields))
    }

    /// A rendered page as the response, with the session cookie when new
    /// and the server's time to build it.
    pub fn respond(&self, page: maud::Markup) -> Response {
        let mut r = view::html(page).into_response();
        self.finish(&mut r);
        r
    }

    pub fn finish(&self, r: &mut Response) {
        let set_cookie = self.made.get().and_then(|m| m.set_cookie.as_deref());
        if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
            r.headers_mut().append(header::SET_COOKIE, c);
        }
        let us = self.started.elapsed().as_micros();
        if let Ok(v) = HeaderValue::from_str(&format!("render;dur={}.{:03}", us / 1000, us % 1000))
        {
            r.headers_mut().insert("server-timing", v);
        }
    }
}

/// The state a page shows: now, or as of a point (`at=`).
pub enum Shown {
    Now(Arc<parking_lot::RwLock<RegistryState>>),
    Past {
        state: Arc<RegistryState>,
        /// The `at` parameter as given, for links.
        at: String,
    },
}

impl Shown {
    pub async fn of(app: &Arc<App>, query: &str) -> Result<Shown, UiError> {
        match query_param(query, "at").filter(|a| !a.trim().is_empty()) {
            None => Ok(Shown::Now(app.state.clone())),
            Some(at) => {
                let point = crate::timefmt::parse_as_of(at.trim()).map_err(UiError::bad_request)?;
                let state = super::ext::asof::state_as_of(app, point).await?;
                Ok(Shown::Past {
                    state,
                    at: at.trim().to_owned(),
                })
            }
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R {
        match self {
            Shown::Now(s) => f(&s.read()),
            Shown::Past { state, .. } => f(state),
        }
    }

    pub fn at(&self) -> Option<&str> {
        match self {
            Shown::Now(_) => None,
            Shown::Past { at, .. } => Some(at),
        }
    }

    pub fn is_past(&self) -> bool {
        self.at().is_some()
    }
}
