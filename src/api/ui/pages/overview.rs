//! The overview: repository, tag and manifest counts, bytes stored,
//! entries per day (a small chart) and the latest events, kept live by
//! the script through `/ui/events` (a long-poll on the event feed).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::json;

use super::super::timeline::{day_of, Line};
use super::super::view::{self, Nav};
use super::super::{Shown, UiError, Viewer};
use super::chrome;
use crate::api::request::query_param;
use crate::api::App;
use crate::timefmt::rfc3339;

/// Latest events listed on the page.
const LATEST_EVENTS: usize = 15;
/// How long the live list's request waits for a new entry.
const LIVE_WAIT: Duration = Duration::from_secs(25);
/// Days in the chart.
const CHART_DAYS: u64 = 14;

pub async fn get(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    page(&app, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

struct Counts {
    repos: usize,
    tags: usize,
    manifests: usize,
    blob_bytes: u64,
    last_seq: u64,
}

async fn page(app: &Arc<App>, headers: &HeaderMap) -> Result<Response, UiError> {
    let viewer = Viewer::of(app, headers, "/ui/").await?;
    let everything = app
        .auth
        .everywhere(&viewer.caller, crate::auth::Action::Pull);
    let counts = {
        let s = app.state.read();
        let mut c = Counts {
            repos: 0,
            tags: 0,
            manifests: 0,
            blob_bytes: 0,
            last_seq: s.last_seq,
        };
        let mut seen = HashSet::new();
        for (name, r) in &s.repos {
            if !viewer.sees(app, name.as_str()) {
                continue;
            }
            c.repos += 1;
            c.tags += r.tags.len();
            c.manifests += r.manifests.len();
            if !everything {
                for (d, size) in &r.blobs {
                    if seen.insert(d.clone()) {
                        c.blob_bytes += size;
                    }
                }
            }
        }
        if everything {
            c.blob_bytes = s.blobs.values().sum();
        }
        c
    };
    let today = day_of(view::now_unix_ns());
    let timeline = app.ui.timeline.view(app).await;
    let days = timeline.per_day(today, CHART_DAYS);
    let latest: Vec<&Line> = timeline
        .recent()
        .rev()
        .filter(|l| visible(app, &viewer, everything, l))
        .take(LATEST_EVENTS)
        .collect();
    let after = timeline.upto();
    let shown = Shown::Now(app.state.clone());
    let body = html! {
        h1 { "Overview" }
        section.stats {
            div.stat { span.n { (counts.repos) } span.l { "repositories" } }
            div.stat { span.n { (counts.tags) } span.l { "tags" } }
            div.stat { span.n { (counts.manifests) } span.l { "manifests" } }
            div.stat { span.n { (view::bytes(counts.blob_bytes)) } span.l { "blobs stored" } }
            div.stat { span.n { "#" (counts.last_seq) } span.l { "log entries" } }
        }
        section.card {
            h2 { "Log entries per day" }
            (chart(&days))
        }
        section.card {
            h2 { "Latest events " span.live title="Updated as they happen" { "● live" } }
            ol #events.events data-after=(after) {
                @for e in &latest { (event_row(e)) }
                @if latest.is_empty() { li.empty { "Nothing yet: push an image." } }
            }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, "Overview", &viewer, Nav::Overview, &shown),
        body,
    )))
}

/// Whether the viewer may see a line: its repository's, or with pull
/// everywhere a registry-wide one.
fn visible(app: &App, viewer: &Viewer, everything: bool, l: &Line) -> bool {
    match &l.repo {
        Some(r) => viewer.sees(app, r.as_str()),
        None => everything,
    }
}

fn event_row(e: &Line) -> Markup {
    html! {
        li {
            span class={ "kind k-" (e.kind) } { (e.kind) }
            @if let Some(repo) = &e.repo {
                a.repo href={ "/ui/r/" (repo) } { (repo) }
            }
            span.text { (e.text) }
            span.who { (e.user) }
            span.seq { "#" (e.seq) }
            (view::timestamp(e.time_unix_ns))
        }
    }
}

fn chart(days: &[(u64, u64)]) -> Markup {
    let max = days.iter().map(|d| d.1).max().unwrap_or(0).max(1);
    let bar_w = 100.0 / days.len().max(1) as f64;
    html! {
        svg.chart viewBox="0 0 100 40" preserveAspectRatio="none" role="img" aria-label="log entries per day" {
            @for (i, (day, n)) in days.iter().enumerate() {
                @let h = (*n as f64 / max as f64) * 36.0;
                rect x=(format!("{:.2}", i as f64 * bar_w + 0.6)) y=(format!("{:.2}", 38.0 - h))
                    width=(format!("{:.2}", bar_w - 1.2)) height=(format!("{:.2}", h.max(0.3))) {
                    title { (rfc3339(day * 86_400 * 1_000_000_000).get(..10).unwrap_or("")) ": " (n) " entries" }
                }
            }
        }
        div.chart-axis {
            span { (days.first().map(|d| rfc3339(d.0 * 86_400 * 1_000_000_000)).unwrap_or_default().get(..10).unwrap_or("")) }
            span { "max " (max) " a day" }
            span { "today" }
        }
    }
}

/// `GET /ui/events?after=N`: the events after `N` the viewer may see, as
/// JSON, waiting up to `LIVE_WAIT` for one (the live list's long-poll).
pub async fn events(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let served = async {
        let viewer = Viewer::of(&app, &headers, "/ui/").await?;
        let after: u64 = query_param(query.as_deref().unwrap_or(""), "after")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let tip = app.writer.tip();
        if tip.seq() <= after {
            let notified = tip.next_commit();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if tip.seq() <= after {
                tokio::select! {
                    _ = tokio::time::timeout(LIVE_WAIT, notified) => {}
                    _ = app.shutdown.cancelled() => {}
                }
            }
        }
        let everything = app
            .auth
            .everywhere(&viewer.caller, crate::auth::Action::Pull);
        let timeline = app.ui.timeline.view(&app).await;
        let upto = timeline.upto();
        // A client far behind gets the latest lines kept, not the gap.
        let lines: Vec<_> = timeline
            .recent()
            .filter(|l| l.seq > after && visible(&app, &viewer, everything, l))
            .map(|l| {
                json!({
                    "seq": l.seq,
                    "time": rfc3339(l.time_unix_ns),
                    "time_unix_ns": l.time_unix_ns,
                    "user": &*l.user,
                    "kind": l.kind,
                    "repo": l.repo,
                    "text": l.text,
                })
            })
            .collect();
        drop(timeline);
        let mut r = axum::Json(json!({ "next": upto.max(after), "events": lines })).into_response();
        viewer.finish(&mut r);
        Ok::<_, UiError>(r)
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}
