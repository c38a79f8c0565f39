//! History: a repository's or a tag's timeline from the history reader
//! (every push, set, move, delete and restore, with actor and time), two
//! versions of a tag compared, and "Restore this version": a confirmation
//! page, then a POST that goes through the API's restore (so the restore
//! is a new entry on the record, with its actor).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use maud::{html, Markup};
use serde_json::Value;

use super::super::view::{self, Nav};
use super::super::{redirect, Form, Shown, UiError, UiResult, Viewer};
use super::chrome;
use crate::api::error::ApiError;
use crate::api::request::{query_param, RequestContext};
use crate::api::App;
use crate::auth::Action;
use crate::history::{self, Change, HistoryItem, HistoryQuery};
use crate::oci::{Digest, RepoName, Tag};

/// Timeline items shown on one page, newest first.
const ITEMS_PER_PAGE: usize = 100;

fn tag_param(query: &str) -> Result<Option<Tag>, UiError> {
    query_param(query, "tag")
        .filter(|t| !t.is_empty())
        .map(|t| Tag::parse(&t).map_err(|_| UiError::bad_request("not a tag")))
        .transpose()
}

pub async fn get(app: &Arc<App>, viewer: &Viewer, name: &RepoName, query: &str) -> UiResult {
    let tag = tag_param(query)?;
    let shown = Shown::of(app, query).await?;
    let upto = shown.read(|s| s.last_seq);
    let q = HistoryQuery {
        repo: name.clone(),
        tag: tag.clone(),
    };
    let log_dir = app.layout.log_dir();
    let read = tokio::task::spawn_blocking(move || history::read(&log_dir, &q, &mut |_| {}))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut items: Vec<HistoryItem> = read.items.into_iter().filter(|i| i.seq <= upto).collect();
    items.reverse();
    let total = items.len();
    let page = super::page_number(query);
    let pages = total.div_ceil(ITEMS_PER_PAGE).max(1);
    let page = page.min(pages);
    let items = &items[(page - 1) * ITEMS_PER_PAGE..(page * ITEMS_PER_PAGE).min(total)];
    let (current, tags) = shown.read(|s| {
        let r = s.repo(name);
        (
            tag.as_ref()
                .and_then(|t| r.and_then(|r| r.tags.get(t)).cloned()),
            r.map(|r| {
                r.tags
                    .keys()
                    .take(200)
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        )
    });
    let may_restore = !shown.is_past() && viewer.may(app, name.as_str(), Action::Push);
    let at = shown.at();
    let base = format!("/ui/r/{name}");
    let versions: Vec<&Digest> = {
        let mut seen = BTreeSet::new();
        items
            .iter()
            .flat_map(|i| &i.changes)
            .filter_map(|c| match c {
                Change::Tagged { digest, .. } | Change::TagMoved { digest, .. } => Some(digest),
                _ => None,
            })
            .filter(|d| seen.insert(*d))
            .collect()
    };
    let title = match &tag {
        Some(t) => format!("{name}:{t} history"),
        None => format!("{name} history"),
    };
    let body = html! {
        h1 { span.muted { "history of " } a href=(view::with_at(&base, at)) { (name) } @if let Some(t) = &tag { ":" (t) } }
        @if query_param(query, "restored").is_some() {
            div.banner.ok role="status" { "Restored: the tag now points at the version you chose, and the restore is on the record below." }
        }
        @if let Some(t) = &tag {
            p { "Now: " @match &current {
                Some(d) => { a href=(view::with_at(&format!("{base}/-/manifest/{d}"), at)) { (view::short_digest(d.as_str())) } }
                None => { span.muted { "(no value)" } }
            } " · " a href=(view::with_at(&format!("{base}/-/history"), at)) { "whole repository" } }
            @if versions.len() > 1 {
                form.search.compare method="get" action=(format!("{base}/-/diff")) {
                    input type="hidden" name="tag" value=(t.as_str());
                    label { "Compare " (version_select("from", &versions, 1)) }
                    label { " with " (version_select("to", &versions, 0)) }
                    button type="submit" { "Compare" }
                }
            }
        } @else if !tags.is_empty() {
            p.tags { "Tags: " @for t in &tags { a.badge href=(view::with_at(&format!("{base}/-/history?tag={}", view::query_value(t)), at)) { (t) } " " } }
        }
        @if let Some(first) = read.log_first_seq.filter(|&f| f > 1) {
            p.muted { "History starts at entry #" (first) ": older entries were compacted away." }
        }
        ol.timeline #timeline {
            @for item in items {
                li data-seq=(item.seq) {
                    div.when { span.seq { "#" (item.seq) } (view::timestamp(item.time_unix_ns)) span.who { (item.actor.user.as_deref().unwrap_or("anonymous")) } }
                    ul.changes {
                        @for c in &item.changes {
                            (change_line(c, &base, at, (tag.as_ref(), current.as_ref()), may_restore, is_restore(item)))
                        }
                    }
                }
            }
            @if items.is_empty() { li.empty { "No history." } }
        }
        (view::pager(page, pages, &|p| {
            let mut h = format!("{base}/-/history?page={p}");
            if let Some(t) = &tag { h.push_str(&format!("&tag={t}")); }
            view::with_at(&h, at)
        }))
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, &title, viewer, Nav::Repositories, &shown),
        body,
    )))
}

fn version_select(name: &str, versions: &[&Digest], selected: usize) -> Markup {
    html! {
        select name=(name) {
            @for (i, d) in versions.iter().enumerate() {
                option value=(d.as_str()) selected[i == selected] { (view::short_digest(d.as_str())) }
            }
        }
    }
}

/// Whether an entry is a restore: only a restore sets a tag without a
/// manifest put in the same entry (a push by tag always logs the put; a
/// restore of a deleted manifest logs one too and reads as a push).
fn is_restore(item: &HistoryItem) -> bool {
    let sets = item
        .changes
        .iter()
        .any(|c| matches!(c, Change::Tagged { .. } | Change::TagMoved { .. }));
    let pushes = item
        .changes
        .iter()
        .any(|c| matches!(c, Change::ManifestPushed { .. }));
    sets && !pushes
}

/// One change of a timeline item; `(tag, current)` are the tag whose
/// history this is and where it points now.
fn change_line(
    c: &Change,
    base: &str,
    at: Option<&str>,
    (tag, current): (Option<&Tag>, Option<&Digest>),
    may_restore: bool,
    restored: bool,
) -> Markup {
    let (set_kind, set_class) = if restored {
        ("restore", "kind k-restore")
    } else {
        ("tag", "kind k-tag")
    };
    let (move_kind, move_class) = if restored {
        ("restore", "kind k-restore")
    } else {
        ("move", "kind k-move")
    };
    let link = |d: &Digest| {
        html! { a href=(view::with_at(&format!("{base}/-/manifest/{d}"), at)) { (view::short_digest(d.as_str())) } }
    };
    let restore = |t: &Tag, d: &Digest| {
        html! {
            @if may_restore && tag == Some(t) && current != Some(d) {
                " " a.button.restore href=(format!("{base}/-/restore?tag={}&digest={d}", view::query_value(t.as_str()))) { "Restore this version" }
            }
        }
    };
    html! {
        li class={ "c-" (c.action()) } {
            @match c {
                Change::ManifestPushed { digest, artifact_type, subject, .. } => {
                    span.kind.k-push { "push" } " " (link(digest))
                    @if let Some(t) = view::artifact_type(artifact_type.as_deref()) { " " code { (t) } }
                    @if let Some(s) = subject { " → refers to " (link(s)) }
                }
                Change::Tagged { tag: t, digest } => {
                    span class=(set_class) { (set_kind) } " " strong { (t) } " → " (link(digest)) (restore(t, digest))
                }
                Change::TagMoved { tag: t, digest, previous } => {
                    span class=(move_class) { (move_kind) } " " strong { (t) } " " (link(previous)) " → " (link(digest))
                    " " a.small href=(view::with_at(&format!("{base}/-/diff?tag={}&from={previous}&to={digest}", view::query_value(t.as_str())), at)) { "what changed" }
                    (restore(t, digest))
                }
                Change::TagDeleted { tag: t, digest } => {
                    span.kind.k-untag { "untag" } " " strong { (t) } " (was " (link(digest)) ")"
                }
                Change::ManifestDeleted { digest } => { span.kind.k-delete { "delete" } " " (link(digest)) }
                Change::BlobLinked { digest, size, .. } => { span.kind.k-blob { "blob" } " " (view::short_digest(digest.as_str())) " " (view::bytes(*size)) }
                Change::BlobUnlinked { digest } => { span.kind.k-blob { "unlink" } " " (view::short_digest(digest.as_str())) }
                Change::ReferrerRegistered { subject, referrer } => {
                    span.kind.k-ref { "referrer" } " " (link(referrer)) " → " (link(subject))
                }
            }
        }
    }
}

/// The layers, config and children of a manifest, for a comparison.
struct Parts {
    config: Option<String>,
    layers: Vec<(String, u64)>,
    children: Vec<(String, String)>,
}

fn parts(body: &[u8]) -> Parts {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    Parts {
        config: v["config"]["digest"].as_str().map(str::to_owned),
        layers: list("layers")
            .iter()
            .filter_map(|l| {
                Some((
                    l["digest"].as_str()?.to_owned(),
                    l["size"].as_u64().unwrap_or(0),
                ))
            })
            .collect(),
        children: list("manifests")
            .iter()
            .filter_map(|c| {
                Some((
                    c["digest"].as_str()?.to_owned(),
                    super::repository::platform_name(&c["platform"]).unwrap_or_default(),
                ))
            })
            .collect(),
    }
}

/// `/-/diff?from=A&to=B[&tag=T]`: what changed between two versions.
pub async fn diff(app: &Arc<App>, viewer: &Viewer, name: &RepoName, query: &str) -> UiResult {
    let digest = |k: &str| {
        query_param(query, k)
            .and_then(|d| Digest::parse(&d).ok())
            .ok_or_else(|| UiError::bad_request(format!("{k} must be a digest")))
    };
    let (from, to) = (digest("from")?, digest("to")?);
    let tag = tag_param(query)?;
    let a = crate::api::ext::restore::find_manifest(app, name, &from).await?;
    let b = crate::api::ext::restore::find_manifest(app, name, &to).await?;
    let (pa, pb) = (parts(&a.body), parts(&b.body));
    let added: Vec<_> = pb
        .layers
        .iter()
        .filter(|l| !pa.layers.contains(l))
        .collect();
    let removed: Vec<_> = pa
        .layers
        .iter()
        .filter(|l| !pb.layers.contains(l))
        .collect();
    let kept = pb.layers.len() - added.len();
    let children_added: Vec<_> = pb
        .children
        .iter()
        .filter(|c| !pa.children.contains(c))
        .collect();
    let children_removed: Vec<_> = pa
        .children
        .iter()
        .filter(|c| !pb.children.contains(c))
        .collect();
    let base = format!("/ui/r/{name}");
    let shown = Shown::Now(app.state.clone());
    let link =
        |d: &str| html! { a href=(format!("{base}/-/manifest/{d}")) { (view::short_digest(d)) } };
    let body = html! {
        h1 { "What changed" @if let Some(t) = &tag { " in " (name) ":" (t) } }
        p { "From " (link(from.as_str())) " to " (link(to.as_str())) }
        section.card #diff {
            @if pa.config.is_some() || pb.config.is_some() {
                p { "Config: " @if pa.config == pb.config { "unchanged" } @else {
                    strong { "changed" } " " (link_or_dash(pa.config.as_deref())) " → " (link_or_dash(pb.config.as_deref()))
                } }
            }
            @if a.media_type != b.media_type { p { "Media type: " code { (a.media_type) } " → " code { (b.media_type) } } }
            p { (added.len()) " layers added, " (removed.len()) " removed, " (kept) " kept" }
            ul.diff {
                @for (d, size) in &added { li.added { "+ " (view::digest(d)) " " (view::bytes(*size)) } }
                @for (d, size) in &removed { li.removed { "− " (view::digest(d)) " " (view::bytes(*size)) } }
                @for (d, p) in &children_added { li.added { "+ " (p) " " (link(d)) } }
                @for (d, p) in &children_removed { li.removed { "− " (p) " " (link(d)) } }
            }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, "What changed", viewer, Nav::Repositories, &shown),
        body,
    )))
}

fn link_or_dash(d: Option<&str>) -> Markup {
    html! { @match d { Some(d) => { code title=(d) { (view::short_digest(d)) } } None => { "—" } } }
}

fn restore_target(
    app: &App,
    viewer: &Viewer,
    name: &RepoName,
    tag: &str,
    digest: &str,
) -> Result<(Tag, Digest), UiError> {
    let tag = Tag::parse(tag).map_err(|_| UiError::bad_request("not a tag"))?;
    let digest = Digest::parse(digest).map_err(|_| UiError::bad_request("not a digest"))?;
    if !viewer.may(app, name.as_str(), Action::Push) {
        return Err(UiError::forbidden(if viewer.writes() {
            "you may not change tags in this repository"
        } else {
            "this UI is read-only (auth is off on a public address; see ui.allow_writes_without_auth)"
        }));
    }
    Ok((tag, digest))
}

/// `GET /-/restore?tag=&digest=`: the confirmation.
pub fn confirm_restore(app: &Arc<App>, viewer: &Viewer, name: &RepoName, query: &str) -> UiResult {
    let (tag, digest) = restore_target(
        app,
        viewer,
        name,
        &query_param(query, "tag").unwrap_or_default(),
        &query_param(query, "digest").unwrap_or_default(),
    )?;
    let current = app
        .state
        .read()
        .repo(name)
        .and_then(|r| r.tags.get(&tag).cloned());
    let shown = Shown::Now(app.state.clone());
    let body = html! {
        section.card.confirm {
            h1 { "Restore " (name) ":" (tag) "?" }
            p { "The tag will point at " (view::digest(digest.as_str())) " again"
                @if let Some(c) = &current { " instead of " (view::digest(c.as_str())) } "." }
            p.muted { "The restore is a new entry in the log, with you as its actor; nothing is erased." }
            form method="post" action=(format!("/ui/r/{name}/-/restore")) {
                (view::csrf(viewer))
                input type="hidden" name="tag" value=(tag.as_str());
                input type="hidden" name="digest" value=(digest.as_str());
                button.primary #confirm type="submit" { "Restore this version" }
                " " a href=(format!("/ui/r/{name}/-/history?tag={}", view::query_value(tag.as_str()))) { "Cancel" }
            }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, "Restore", viewer, Nav::Repositories, &shown),
        body,
    )))
}

/// `POST /-/restore`: through the API's restore.
pub async fn restore(
    app: &Arc<App>,
    viewer: &Viewer,
    ctx: &RequestContext,
    name: RepoName,
    form: &Form,
) -> UiResult {
    let (tag, digest) = restore_target(
        app,
        viewer,
        &name,
        form.required("tag")?,
        form.required("digest")?,
    )?;
    let query = format!("tag={}&digest={digest}", view::query_value(tag.as_str()));
    let done = crate::api::ext::restore::tag(app, ctx, name.clone(), &query).await?;
    if !done.status().is_success() {
        return Err(UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the restore did not complete",
        ));
    }
    let mut r = redirect(&format!(
        "/ui/r/{name}/-/history?tag={}&restored=1",
        view::query_value(tag.as_str())
    ));
    viewer.finish(&mut r);
    Ok(r)
}
