//! The built-in token endpoint of the token flow (`auth.scheme = "token"`),
//! as distribution's token authentication expects one:
//!
//! - `GET /auth/token?service=&scope=…` with Basic credentials (or none,
//!   for an anonymous token): `{"token", "access_token", "expires_in",
//!   "issued_at"}`;
//! - `POST /auth/token` with an OAuth2 password grant form
//!   (`grant_type=password&username=&password=&service=&scope=`), as
//!   containerd and docker send it: the same, plus `scope`.
//!
//! Each scope asked for is cut down to what the rules allow the user;
//! what no rule allows is left out (the registry then answers 403 or 401
//! on the request that needs it). Refresh tokens are not issued, so
//! clients keep the password and ask again when a token expires.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::body::read_limited;
use super::error::{ApiError, ErrorCode};
use super::request::query_pairs;
use super::App;
use crate::auth::{self, token::parse_scope, AccessClaim};
use crate::limits::TOKEN_SCOPES_MAX;

/// A token request form is small; more than this is refused.
const FORM_BYTES_MAX: u64 = 64 * 1024;

fn bad_request(message: &str) -> Response {
    ApiError::new(ErrorCode::Unsupported, message)
        .with_status(StatusCode::BAD_REQUEST)
        .into_response()
}

fn unauthorized(app: &App) -> Response {
    metrics::counter!(crate::metrics::AUTH_REFUSALS, "reason" => "token_credentials").increment(1);
    ApiError::new(ErrorCode::Unauthorized, "invalid user name or password")
        .with_header(header::WWW_AUTHENTICATE, &app.auth.basic_challenge())
        .into_response()
}

/// The scopes asked for: every `scope` value, each possibly several
/// separated by spaces.
fn scopes<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<AccessClaim>, &'static str> {
    let mut out = Vec::new();
    for s in values.flat_map(|v| v.split(' ')).filter(|s| !s.is_empty()) {
        if out.len() == TOKEN_SCOPES_MAX {
            return Err("too many scopes");
        }
        out.push(parse_scope(s).ok_or("a scope is type:name:actions")?);
    }
    Ok(out)
}

/// The access a token request asks for (its `scope` parameters), once its
/// `service` is checked: the same for the GET and the POST form.
fn requested_access(
    app: &App,
    pairs: &[(String, String)],
) -> Result<Vec<AccessClaim>, &'static str> {
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    check_service(app, service)?;
    scopes(
        pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
}

fn check_service(app: &App, service: Option<&str>) -> Result<(), &'static str> {
    match service {
        Some(s) if s != app.auth.service() => {
            Err("this token service is not the one the registry names")
        }
        _ => Ok(()),
    }
}

/// Issues a token for `user` with what `requested` may get.
fn issue(app: &App, user: Option<&str>, requested: &[AccessClaim], oauth: bool) -> Response {
    let Some(signer) = app.auth.signer() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let granted = app.auth.grant(user, requested);
    let scope = granted
        .iter()
        .map(|g| format!("{}:{}:{}", g.kind, g.name, g.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ");
    let (token, issued_at) = match signer.issue(user.unwrap_or(""), granted) {
        Ok(t) => t,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": signer.lifetime_secs(),
        "issued_at": crate::timefmt::rfc3339(issued_at.saturating_mul(1_000_000_000)),
    });
    if oauth {
        body["scope"] = json!(scope);
    }
    tracing::debug!(user = user.unwrap_or("anonymous"), %scope, "token issued");
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    r
}

pub async fn get(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if app.auth.signer().is_none() {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let pairs = query_pairs(query.as_deref().unwrap_or(""));
    let requested = match requested_access(&app, &pairs) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let user = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(value) => {
            let credentials = value
                .split_once(' ')
                .filter(|(kind, _)| kind.eq_ignore_ascii_case("basic"))
                .and_then(|(_, rest)| auth::decode_basic(rest));
            match credentials {
                Some((u, p)) if app.auth.verify_password(&u, &p).await => Some(u),
                _ => return unauthorized(&app),
            }
        }
    };
    issue(&app, user.as_deref(), &requested, false)
}

pub async fn post(State(app): State<Arc<App>>, body: Body) -> Response {
    if app.auth.signer().is_none() {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let form = match read_limited(body, FORM_BYTES_MAX).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&form).into_owned().collect();
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let requested = match requested_access(&app, &pairs) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match param("grant_type") {
        Some("password") => {
            let (Some(user), Some(password)) = (param("username"), param("password")) else {
                return bad_request("a password grant needs username and password");
            };
            if !app.auth.verify_password(user, password).await {
                return unauthorized(&app);
            }
            issue(&app, Some(user), &requested, true)
        }
        _ => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "unsupported_grant_type",
                "error_description": "only the password grant is supported",
            })),
        )
            .into_response(),
    }
}
