//! The login page (htpasswd users, when auth is on) and logout. A login
//! replaces the browser's session with a new one carrying the user.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::super::session::Sessions;
use super::super::view::{self, Chrome, Nav};
use super::super::{redirect, UiError, Viewer};
use crate::api::request::query_param;
use crate::api::App;

/// Where to go after login: a UI page only (no open redirect).
fn next_page(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/ui/")
        .to_owned()
}

fn form(viewer: &Viewer, next: &str, failed: bool, status: StatusCode) -> Response {
    let body = html! {
        section.card.login {
            h1 { "Log in" }
            @if failed { p.banner.warn role="alert" { "Wrong user name or password." } }
            form method="post" action="/ui/login" {
                (view::csrf(viewer))
                input type="hidden" name="next" value=(next);
                label { "User" input #user type="text" name="user" autocomplete="username" required autofocus; }
                label { "Password" input #password type="password" name="password" autocomplete="current-password" required; }
                button.primary #login type="submit" { "Log in" }
            }
        }
    };
    let page = view::layout(
        &Chrome {
            title: "Log in",
            viewer: Some(viewer),
            admin: false,
            nav: Nav::None,
            past: None,
        },
        body,
    );
    let mut r = viewer.respond(page);
    *r.status_mut() = status;
    r
}

pub async fn get(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !app.auth.enabled() {
        return redirect("/ui/");
    }
    let viewer = Viewer::anyone(&app, &headers);
    let next = next_page(query_param(query.as_deref().unwrap_or(""), "next").as_deref());
    form(&viewer, &next, false, StatusCode::OK)
}

pub async fn post(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let served = async {
        if !app.auth.enabled() {
            return Ok(redirect("/ui/"));
        }
        let viewer = Viewer::anyone(&app, &headers);
        let f = viewer.form(body).await?;
        let next = next_page(f.get("next"));
        let user = f.get("user").unwrap_or("");
        let password = f.get("password").unwrap_or("");
        if user.is_empty() || !app.auth.verify_password(user, password).await {
            return Ok(form(&viewer, &next, true, StatusCode::UNAUTHORIZED));
        }
        if let Some(t) = viewer.token() {
            app.ui.sessions.remove(t);
        }
        let session = app.ui.sessions.create(Some(user.to_owned()), app.tls);
        let mut r = redirect(&next);
        if let Some(c) = session
            .set_cookie
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        Ok::<_, UiError>(r)
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn logout(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let served = async {
        let viewer = Viewer::anyone(&app, &headers);
        viewer.form(body).await?;
        if let Some(t) = viewer.token() {
            app.ui.sessions.remove(t);
        }
        let mut r = redirect(if app.auth.enabled() {
            "/ui/login"
        } else {
            "/ui/"
        });
        if let Ok(c) = HeaderValue::from_str(&Sessions::expired_cookie(app.tls)) {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        Ok::<_, UiError>(r)
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::next_page;

    #[test]
    fn only_ui_pages_are_followed_after_login() {
        assert_eq!(next_page(Some("/ui/r/app")), "/ui/r/app");
        assert_eq!(next_page(Some("https://evil.example/")), "/ui/");
        assert_eq!(next_page(Some("//evil.example/ui/")), "/ui/");
        assert_eq!(next_page(None), "/ui/");
    }
}
