//! Administration, for those allowed delete on every repository: a
//! garbage collection report (dry run) and a real run; and the deletes of
//! a tag or a manifest (a confirmation page, then a POST through the
//! API's delete).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::super::view::{self, Nav};
use super::super::{redirect, Form, Shown, UiError, UiResult, Viewer};
use super::chrome;
use crate::api::request::{query_param, RequestContext};
use crate::api::App;
use crate::auth::Action;
use crate::gc::GcError;
use crate::oci::{Reference, RepoName};

pub async fn get(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let served = async {
        let viewer = Viewer::of(&app, &headers, "/ui/admin").await?;
        admin_only(&app, &viewer)?;
        Ok::<_, UiError>(page(&app, &viewer, None))
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

fn admin_only(app: &App, viewer: &Viewer) -> Result<(), UiError> {
    if viewer.admin(app) {
        Ok(())
    } else {
        Err(UiError::forbidden(
            "administration is for users allowed to delete in every repository",
        ))
    }
}

fn page(app: &Arc<App>, viewer: &Viewer, report: Option<(bool, serde_json::Value)>) -> Response {
    let shown = Shown::Now(app.state.clone());
    let can_run = viewer.writes() && app.gc.is_some();
    let body = html! {
        h1 { "Administration" }
        section.card #gc {
            h2 { "Garbage collection" }
            p.muted { "A dry run reports what a collection would delete and changes nothing. A run deletes unreferenced blobs (and, when the policy is set, old untagged manifests) and records the collection in the log." }
            @if app.gc.is_none() { p { "This server does not collect garbage (it serves a past state)." } }
            @else {
                form.inline method="post" action="/ui/admin/gc" {
                    (view::csrf(viewer))
                    input type="hidden" name="dry_run" value="true";
                    button #gc-dry-run type="submit" { "Dry run" }
                }
                @if can_run {
                    form.inline method="post" action="/ui/admin/gc" data-confirm="Collect garbage now? Unreferenced blobs will be deleted." {
                        (view::csrf(viewer))
                        input type="hidden" name="dry_run" value="false";
                        button.danger #gc-run type="submit" { "Collect now" }
                    }
                }
            }
            @if let Some((dry_run, report)) = &report {
                h3 { @if *dry_run { "Dry run report" } @else { "Collection report" } }
                (report_table(report))
            }
        }
        section.card {
            h2 { "Deleting tags and manifests" }
            p { "Open a repository: each tag and manifest has a Delete link (shown where you may delete), which asks for confirmation. Deletes are entries in the log and can be restored from a tag's history." }
        }
    };
    viewer.respond(view::layout(
        &chrome(app, "Administration", viewer, Nav::Admin, &shown),
        body,
    ))
}

/// Items of a report's list shown (a dry run can list many blobs).
const REPORT_ITEMS_SHOWN_MAX: usize = 50;

fn report_table(report: &serde_json::Value) -> Markup {
    html! {
        dl.kv #gc-report {
            @if let Some(map) = report.as_object() {
                @for (k, v) in map {
                    dt { (k.replace('_', " ")) }
                    dd {
                        @match v {
                            serde_json::Value::Array(items) if items.is_empty() => { "none" }
                            serde_json::Value::Array(items) => {
                                ul.plain {
                                    @for item in items.iter().take(REPORT_ITEMS_SHOWN_MAX) {
                                        li { code { (item.as_str().map(str::to_owned).unwrap_or_else(|| item.to_string())) } }
                                    }
                                    @if items.len() > REPORT_ITEMS_SHOWN_MAX { li.muted { "and " (items.len() - REPORT_ITEMS_SHOWN_MAX) " more" } }
                                }
                            }
                            serde_json::Value::Number(n) if k.contains("bytes") => {
                                (view::bytes(n.as_u64().unwrap_or(0)))
                            }
                            v => { (v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())) }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /ui/admin/gc`: a dry run or a run, through the collector.
pub async fn gc(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let served = async {
        let viewer = Viewer::of(&app, &headers, "/ui/admin").await?;
        let form = viewer.form(body).await?;
        admin_only(&app, &viewer)?;
        let dry_run = form.get("dry_run") != Some("false");
        if !dry_run && !viewer.writes() {
            return Err(UiError::forbidden("this UI is read-only"));
        }
        let gc = app.gc.as_ref().ok_or_else(|| {
            UiError::new(StatusCode::METHOD_NOT_ALLOWED, "no garbage collection here")
        })?;
        let report = match gc.collector.run(&gc.options(dry_run)).await {
            Ok(r) => serde_json::to_value(&r).unwrap_or_default(),
            Err(GcError::Busy) => {
                return Err(UiError::new(
                    StatusCode::CONFLICT,
                    "a garbage collection is already running",
                ))
            }
            Err(e) => return Err(crate::api::error::ApiError::internal(e).into()),
        };
        Ok(page(&app, &viewer, Some((dry_run, report))))
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

fn reference(app: &App, viewer: &Viewer, name: &RepoName, r: &str) -> Result<Reference, UiError> {
    let reference = Reference::parse(r).map_err(|_| UiError::bad_request("not a tag or digest"))?;
    if !viewer.may(app, name.as_str(), Action::Delete) {
        return Err(UiError::forbidden(
            if viewer.writes() && app.delete_enabled {
                "you may not delete in this repository"
            } else {
                "deletes are not possible from this UI"
            },
        ));
    }
    Ok(reference)
}

/// `GET /-/delete?reference=`: the confirmation.
pub fn confirm_delete(app: &Arc<App>, viewer: &Viewer, name: &RepoName, query: &str) -> UiResult {
    let r = query_param(query, "reference").unwrap_or_default();
    let reference = reference(app, viewer, name, &r)?;
    let what = match &reference {
        Reference::Tag(t) => html! { "the tag " strong { (name) ":" (t) } " (the manifest stays)" },
        Reference::Digest(d) => {
            html! { "the manifest " (view::digest(d.as_str())) " and every tag that points at it" }
        }
    };
    let shown = Shown::Now(app.state.clone());
    let body = html! {
        section.card.confirm {
            h1 { "Delete?" }
            p { "This deletes " (what) ". The delete is an entry in the log: a tag can be restored from its history." }
            form method="post" action=(format!("/ui/r/{name}/-/delete")) {
                (view::csrf(viewer))
                input type="hidden" name="reference" value=(r);
                button.danger #confirm type="submit" { "Delete" }
                " " a href=(format!("/ui/r/{name}")) { "Cancel" }
            }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, "Delete", viewer, Nav::Repositories, &shown),
        body,
    )))
}

/// `POST /-/delete`: through the API's delete.
pub async fn delete(
    app: &Arc<App>,
    viewer: &Viewer,
    ctx: &RequestContext,
    name: RepoName,
    form: &Form,
) -> UiResult {
    let reference = reference(app, viewer, &name, form.required("reference")?)?;
    crate::api::manifests::delete(app, ctx, name.clone(), reference).await?;
    let mut r = redirect(&format!("/ui/r/{name}"));
    viewer.finish(&mut r);
    Ok(r)
}
