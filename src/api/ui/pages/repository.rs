//! A repository: its tags (digest, size, platforms, when pushed and by
//! whom; searched, sorted by name or time, a page at a time), its
//! referrers grouped by `artifactType`, and pull commands to copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use maud::{html, Markup};

use super::super::view::{self, Nav};
use super::super::{Shown, UiResult, Viewer};
use super::{chrome, page_bounds, page_number};
use crate::api::request::query_param;
use crate::api::App;
use crate::auth::Action;
use crate::oci::{Digest, RepoName};
use crate::projection::{Manifest, Repo};

/// One row of the tag table.
pub struct TagRow {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platforms: Vec<String>,
    pub put_seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Time,
}

/// Bytes of an image (manifest, config and layers) or of an index (its
/// own bytes and those of the children this repository holds).
pub fn size_of(repo: &Repo, m: &Manifest) -> u64 {
    let own = |m: &Manifest| {
        m.body.len() as u64
            + m.blobs
                .iter()
                .map(|b| repo.blobs.get(b).copied().unwrap_or(0))
                .sum::<u64>()
    };
    own(m)
        + m.manifests
            .iter()
            .filter_map(|c| repo.manifests.get(c))
            .map(own)
            .sum::<u64>()
}

/// `os/architecture[/variant]` of each child of an index.
pub fn platforms(m: &Manifest) -> Vec<String> {
    if m.manifests.is_empty() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.body) else {
        return Vec::new();
    };
    v["manifests"]
        .as_array()
        .map(|children| {
            children
                .iter()
                .filter_map(|c| platform_name(&c["platform"]))
                .collect()
        })
        .unwrap_or_default()
}

pub fn platform_name(p: &serde_json::Value) -> Option<String> {
    let os = p["os"].as_str()?;
    let arch = p["architecture"].as_str()?;
    Some(match p["variant"].as_str() {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// The tag rows matching `search`, sorted, one page built.
pub fn tag_rows(
    repo: &Repo,
    search: &str,
    sort: Sort,
    page: usize,
) -> (Vec<TagRow>, usize, usize, usize) {
    let search = search.trim();
    let mut all: Vec<_> = repo
        .tags
        .iter()
        .filter(|(t, _)| search.is_empty() || t.as_str().contains(search))
        .map(|(t, d)| {
            let put_seq = repo.manifests.get(d).map(|m| m.put_seq).unwrap_or(0);
            (t, d, put_seq)
        })
        .collect();
    if sort == Sort::Time {
        all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    }
    let (start, end, page, pages) = page_bounds(all.len(), page);
    let rows = all[start..end]
        .iter()
        .map(|(t, d, put_seq)| {
            let m = repo.manifests.get(*d);
            TagRow {
                tag: t.to_string(),
                digest: (*d).clone(),
                media_type: m.map(|m| m.media_type.clone()).unwrap_or_default(),
                size: m.map(|m| size_of(repo, m)).unwrap_or(0),
                platforms: m.map(platforms).unwrap_or_default(),
                put_seq: *put_seq,
            }
        })
        .collect();
    (rows, all.len(), page, pages)
}

/// Referrers in the repository, by artifact type: (referrer, subject).
fn referrers(repo: &Repo) -> BTreeMap<String, Vec<(Digest, Digest)>> {
    let mut by_type: BTreeMap<String, Vec<(Digest, Digest)>> = BTreeMap::new();
    for (subject, set) in &repo.referrers {
        for r in set {
            let t = repo
                .manifests
                .get(r)
                .and_then(|m| m.artifact_type.clone())
                .unwrap_or_else(|| "(no artifactType)".into());
            by_type
                .entry(t)
                .or_default()
                .push((r.clone(), subject.clone()));
        }
    }
    by_type
}

/// Referrers listed per artifact type on the page.
const REFERRERS_SHOWN_MAX: usize = 50;

pub async fn get(
    app: &Arc<App>,
    viewer: &Viewer,
    name: &RepoName,
    query: &str,
    headers: &HeaderMap,
) -> UiResult {
    let shown = Shown::of(app, query).await?;
    let search = query_param(query, "q").unwrap_or_default();
    let sort = match query_param(query, "sort").as_deref() {
        Some("name") => Sort::Name,
        _ => Sort::Time,
    };
    let found = shown.read(|s| {
        s.repo(name).map(|r| {
            let (rows, total, page, pages) = tag_rows(r, &search, sort, page_number(query));
            (rows, total, page, pages, referrers(r), r.manifests.len())
        })
    });
    let Some((rows, total, page, pages, referrers, manifests)) = found else {
        return Err(super::super::UiError::not_found(
            "no such repository (at that point)",
        ));
    };
    let timeline = app.ui.timeline.view(app).await;
    let at = shown.at();
    let base = format!("/ui/r/{name}");
    let href = |sort: Sort, page: usize| {
        view::with_at(
            &format!(
                "{base}?q={}&sort={}&page={page}",
                view::query_value(&search),
                if sort == Sort::Name { "name" } else { "time" }
            ),
            at,
        )
    };
    let may_delete = !shown.is_past() && viewer.may(app, name.as_str(), Action::Delete);
    let host = host(headers);
    let pull_tag = rows
        .iter()
        .find(|r| r.tag == "latest")
        .or(rows.first())
        .map(|r| r.tag.clone());
    let body = html! {
        h1 { span.muted { "repository " } (name) }
        p.actions {
            a.button href=(view::with_at(&format!("{base}/-/history"), at)) { "History" }
            " " span.muted { (total) " tags · " (manifests) " manifests" }
        }
        @if let Some(tag) = &pull_tag {
            @if !shown.is_past() { (pull_commands(&host, name, tag, app.tls)) }
        }
        section.card {
            h2 { "Tags" }
            form.search method="get" action=(base) {
                input type="search" name="q" value=(search) placeholder="Search tags" aria-label="Search tags";
                @if let Some(at) = at { input type="hidden" name="at" value=(at); }
                input type="hidden" name="sort" value=(if sort == Sort::Name { "name" } else { "time" });
                button type="submit" { "Search" }
            }
            div.table-wrap {
                table.list #tags {
                    thead { tr {
                        th { a href=(href(Sort::Name, 1)) { "Tag" } @if sort == Sort::Name { " ▾" } }
                        th { "Digest" }
                        th.num { "Size" }
                        th { "Platforms" }
                        th { a href=(href(Sort::Time, 1)) { "Pushed" } @if sort == Sort::Time { " ▾" } }
                        @if may_delete { th {} }
                    } }
                    tbody {
                        @for r in &rows {
                            tr data-tag=(r.tag) {
                                td { a.tag href=(view::with_at(&format!("{base}/-/history?tag={}", view::query_value(&r.tag)), at)) { (r.tag) } }
                                td { a href=(view::with_at(&format!("{base}/-/manifest/{}", r.digest), at)) { (view::short_digest(r.digest.as_str())) } button.copy type="button" data-copy=(r.digest.as_str()) title="Copy the digest" { "copy" } }
                                td.num { (view::bytes(r.size)) }
                                td { @for p in &r.platforms { span.badge { (p) } " " } @if r.platforms.is_empty() { span.muted { (media_kind(&r.media_type)) } } }
                                td {
                                    @match timeline.stamp(r.put_seq) {
                                        Some(s) => { (view::timestamp(s.time_unix_ns)) " " span.who { "by " (s.user) } }
                                        None => { "#" (r.put_seq) }
                                    }
                                }
                                @if may_delete {
                                    td { a.danger href=(format!("{base}/-/delete?reference={}", view::query_value(&r.tag))) { "Delete" } }
                                }
                            }
                        }
                    }
                }
            }
            (view::pager(page, pages, &|p| href(sort, p)))
        }
        section.card #referrers {
            h2 { "Referrers" }
            @if referrers.is_empty() { p.muted { "No signatures, SBOMs or attestations refer to this repository's manifests." } }
            @for (artifact_type, list) in &referrers {
                h3 { code { (artifact_type) } " " span.muted { "(" (list.len()) ")" } }
                ul.referrers {
                    @for (r, subject) in list.iter().take(REFERRERS_SHOWN_MAX) {
                        li {
                            a href=(view::with_at(&format!("{base}/-/manifest/{r}"), at)) { (view::short_digest(r.as_str())) }
                            " refers to "
                            a href=(view::with_at(&format!("{base}/-/manifest/{subject}"), at)) { (view::short_digest(subject.as_str())) }
                        }
                    }
                }
            }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, name.as_str(), viewer, Nav::Repositories, &shown),
        body,
    )))
}

fn media_kind(media_type: &str) -> &'static str {
    if media_type.contains("index") || media_type.contains("manifest.list") {
        "index"
    } else if media_type.is_empty() {
        ""
    } else {
        "image"
    }
}

/// The `Host` the browser used, when it is a plain host name.
pub fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost:5000")
        .to_owned()
}

fn pull_commands(host: &str, name: &RepoName, tag: &str, tls: bool) -> Markup {
    let image = format!("{host}/{name}:{tag}");
    let (podman, skopeo, oras) = if tls {
        ("", "", "")
    } else {
        (
            " --tls-verify=false",
            " --src-tls-verify=false",
            " --plain-http",
        )
    };
    html! {
        section.card.pull {
            h2 { "Pull " code { (tag) } }
            div.cmds {
                div { span.tool { "docker" } (view::command(&format!("docker pull {image}"))) }
                div { span.tool { "podman" } (view::command(&format!("podman pull{podman} {image}"))) }
                div { span.tool { "skopeo" } (view::command(&format!("skopeo copy{skopeo} docker://{image} oci:{tag}"))) }
                div { span.tool { "oras" } (view::command(&format!("oras pull{oras} {image}"))) }
            }
        }
    }
}
