//! Repositories: the ones the viewer may pull, searched by name, sorted by
//! name or last push, a page at a time; and the "As of" page, which shows
//! the same list as it was at a sequence number or a time.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::super::timeline::View as TimelineView;
use super::super::view::{self, Nav};
use super::super::{Shown, UiError, Viewer};
use super::{chrome, page_bounds, page_number};
use crate::api::request::query_param;
use crate::api::App;
use crate::projection::State as RegistryState;

/// One row of the list.
pub struct Row {
    pub name: String,
    pub tags: usize,
    pub manifests: usize,
    /// The sequence number of the newest manifest put.
    pub last_push_seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Push,
}

/// The rows matching `search`, sorted, and their total before paging.
pub fn rows(
    state: &RegistryState,
    search: &str,
    sort: Sort,
    page: usize,
    sees: &dyn Fn(&str) -> bool,
) -> (Vec<Row>, usize, usize, usize) {
    let search = search.trim().to_ascii_lowercase();
    let matching = state
        .repos
        .iter()
        .filter(|(name, _)| search.is_empty() || name.as_str().contains(search.as_str()))
        .filter(|(name, _)| sees(name.as_str()));
    match sort {
        // The map is in name order: only the page's rows are built.
        Sort::Name => {
            let all: Vec<_> = matching.collect();
            let (start, end, page, pages) = page_bounds(all.len(), page);
            let rows = all[start..end]
                .iter()
                .map(|(name, r)| row(name.as_str(), r))
                .collect::<Vec<_>>();
            (rows, all.len(), page, pages)
        }
        Sort::Push => {
            let mut all: Vec<_> = matching
                .map(|(name, r)| {
                    let last = r.manifests.values().map(|m| m.put_seq).max().unwrap_or(0);
                    (last, name, r)
                })
                .collect();
            all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            let (start, end, page, pages) = page_bounds(all.len(), page);
            let rows = all[start..end]
                .iter()
                .map(|(_, name, r)| row(name.as_str(), r))
                .collect::<Vec<_>>();
            (rows, all.len(), page, pages)
        }
    }
}

fn row(name: &str, r: &crate::projection::Repo) -> Row {
    Row {
        name: name.to_owned(),
        tags: r.tags.len(),
        manifests: r.manifests.len(),
        last_push_seq: r.manifests.values().map(|m| m.put_seq).max().unwrap_or(0),
    }
}

pub async fn get(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    list(
        &app,
        &headers,
        query.as_deref().unwrap_or(""),
        Nav::Repositories,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `/ui/asof`: the picker, and with `at=` the registry as it was.
pub async fn asof(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    list(&app, &headers, query.as_deref().unwrap_or(""), Nav::AsOf)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list(
    app: &Arc<App>,
    headers: &HeaderMap,
    query: &str,
    nav: Nav,
) -> Result<Response, UiError> {
    let path = if nav == Nav::AsOf {
        "/ui/asof"
    } else {
        "/ui/repositories"
    };
    let viewer = Viewer::of(app, headers, path).await?;
    let shown = Shown::of(app, query).await?;
    let search = query_param(query, "q").unwrap_or_default();
    let sort = match query_param(query, "sort").as_deref() {
        Some("push") => Sort::Push,
        _ => Sort::Name,
    };
    let (rows, total, page, pages) = shown.read(|s| {
        rows(s, &search, sort, page_number(query), &|name| {
            viewer.sees(app, name)
        })
    });
    let last_seq = app.state.read().last_seq;
    let timeline = app.ui.timeline.view(app).await;
    let at = shown.at();
    let href = |sort: Sort, page: usize| {
        let mut h = format!(
            "{path}?q={}&sort={}&page={page}",
            view::query_value(&search),
            if sort == Sort::Push { "push" } else { "name" }
        );
        if let Some(at) = at {
            h.push_str(&format!("&at={}", view::query_value(at)));
        }
        h
    };
    let title = if nav == Nav::AsOf {
        "As of"
    } else {
        "Repositories"
    };
    let show_list = nav == Nav::Repositories || shown.is_past();
    let body = html! {
        h1 { (title) }
        @if nav == Nav::AsOf { (picker(at, last_seq)) }
        @if show_list {
            form.search method="get" action=(path) {
                input type="search" name="q" value=(search) placeholder="Search repositories" aria-label="Search repositories";
                @if let Some(at) = at { input type="hidden" name="at" value=(at); }
                select name="sort" aria-label="Sort" {
                    option value="name" selected[sort == Sort::Name] { "by name" }
                    option value="push" selected[sort == Sort::Push] { "by last push" }
                }
                button type="submit" { "Search" }
            }
            p.muted { (total) " repositor" (if total == 1 { "y" } else { "ies" }) }
            div.table-wrap {
                table.list #repositories {
                    thead { tr {
                        th { a href=(href(Sort::Name, 1)) { "Name" } }
                        th.num { "Tags" }
                        th.num { "Manifests" }
                        th { a href=(href(Sort::Push, 1)) { "Last push" } }
                    } }
                    tbody {
                        @for r in &rows { (row_html(r, at, &timeline)) }
                    }
                }
            }
            (view::pager(page, pages, &|p| href(sort, p)))
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, title, &viewer, nav, &shown),
        body,
    )))
}

fn row_html(r: &Row, at: Option<&str>, timeline: &TimelineView) -> Markup {
    html! {
        tr {
            td { a href=(view::with_at(&format!("/ui/r/{}", r.name), at)) { (r.name) } }
            td.num { (r.tags) }
            td.num { (r.manifests) }
            td {
                @match timeline.stamp(r.last_push_seq) {
                    Some(s) => { (view::timestamp(s.time_unix_ns)) " " span.who { "by " (s.user) } }
                    None => { @if r.last_push_seq > 0 { "#" (r.last_push_seq) } @else { "—" } }
                }
            }
        }
    }
}

fn picker(at: Option<&str>, last_seq: u64) -> Markup {
    let seq_value = at.and_then(|a| a.parse::<u64>().ok()).unwrap_or(last_seq);
    html! {
        section.card {
            p { "See the whole registry — repositories, tags, manifests — as it was at a point of its log: a sequence number, or a time (RFC 3339, UTC)." }
            form.asof #asof-form method="get" action="/ui/asof" {
                label { "Entry #"
                    input type="range" #asof-range min="1" max=(last_seq.max(1)) value=(seq_value) aria-label="Sequence number";
                }
                input type="text" name="at" #asof-at value=(at.unwrap_or("")) placeholder={ "e.g. " (last_seq.max(1)) " or 2026-01-31T12:00:00Z" } aria-label="Sequence number or time";
                button type="submit" { "Show the past" }
            }
        }
    }
}
