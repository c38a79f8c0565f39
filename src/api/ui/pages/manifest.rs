//! A manifest: its config, layers with sizes, annotations, an index's
//! platforms with links to each child, its subject and referrers, and the
//! raw JSON. A manifest no longer in the repository is read from the log
//! (through restore's reader) and marked as deleted.

use std::sync::Arc;

use maud::{html, Markup};
use serde_json::Value;

use super::super::view::{self, Nav};
use super::super::{Shown, UiError, UiResult, Viewer};
use super::chrome;
use super::repository::platform_name;
use crate::api::App;
use crate::auth::Action;
use crate::oci::{Digest, RepoName};

pub async fn get(
    app: &Arc<App>,
    viewer: &Viewer,
    name: &RepoName,
    digest: &str,
    query: &str,
) -> UiResult {
    let digest = Digest::parse(digest).map_err(|_| UiError::not_found("not a digest"))?;
    let shown = Shown::of(app, query).await?;
    let found = shown.read(|s| {
        s.repo(name).and_then(|r| {
            r.manifests.get(&digest).map(|m| {
                let tags: Vec<String> = r
                    .tags
                    .iter()
                    .filter(|(_, d)| **d == digest)
                    .map(|(t, _)| t.to_string())
                    .collect();
                let referrers: Vec<(Digest, Option<String>)> = r
                    .referrers
                    .get(&digest)
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        (
                            d.clone(),
                            r.manifests.get(d).and_then(|m| m.artifact_type.clone()),
                        )
                    })
                    .collect();
                (m.clone(), tags, referrers)
            })
        })
    });
    let (manifest, tags, referrers, deleted) = match found {
        Some((m, tags, referrers)) => (m, tags, referrers, false),
        None if !shown.is_past() => {
            let m = crate::api::ext::restore::find_manifest(app, name, &digest).await?;
            (m, Vec::new(), Vec::new(), true)
        }
        None => return Err(UiError::not_found("no such manifest at that point")),
    };
    let json: Value = serde_json::from_slice(&manifest.body).unwrap_or(Value::Null);
    let raw = serde_json::to_string_pretty(&json)
        .unwrap_or_else(|_| String::from_utf8_lossy(&manifest.body).into_owned());
    let at = shown.at();
    let base = format!("/ui/r/{name}");
    let link = |d: &str| view::with_at(&format!("{base}/-/manifest/{d}"), at);
    let may_delete = !deleted && !shown.is_past() && viewer.may(app, name.as_str(), Action::Delete);
    let title = view::short_digest(digest.as_str());
    let body = html! {
        h1 { span.muted { "manifest " } (view::digest(digest.as_str())) }
        p {
            "in " a href=(view::with_at(&base, at)) { (name) }
            @for t in &tags { " " a.badge href=(view::with_at(&format!("{base}/-/history?tag={}", view::query_value(t)), at)) { (t) } }
            " · " code { (manifest.media_type) }
            " · " (view::bytes(manifest.body.len() as u64)) " of JSON"
            @if let Some(t) = view::artifact_type(manifest.artifact_type.as_deref()) { " · artifact " code { (t) } }
        }
        @if deleted { div.banner.warn { "This manifest is no longer in the repository: shown as it was last pushed, from the log." } }
        @if may_delete {
            p { a.danger href=(format!("{base}/-/delete?reference={digest}")) { "Delete this manifest" } }
        }
        @if let Some(subject) = json["subject"]["digest"].as_str() {
            section.card { h2 { "Subject" } p { "Refers to " a href=(link(subject)) { (view::short_digest(subject)) } } }
        }
        @if let Some(children) = json["manifests"].as_array() {
            section.card #platforms {
                h2 { "Platforms" }
                table.list { tbody {
                    @for c in children {
                        tr {
                            td { (platform_name(&c["platform"]).unwrap_or_else(|| "—".into())) }
                            td { @if let Some(d) = c["digest"].as_str() { a href=(link(d)) { (view::short_digest(d)) } } }
                            td.num { (view::bytes(c["size"].as_u64().unwrap_or(0))) }
                        }
                    }
                } }
            }
        }
        @if json["config"].is_object() {
            section.card #config {
                h2 { "Config" }
                (descriptor(&json["config"]))
            }
        }
        @if let Some(layers) = json["layers"].as_array() {
            section.card #layers {
                h2 { "Layers " span.muted { "(" (layers.len()) ", " (view::bytes(layers.iter().filter_map(|l| l["size"].as_u64()).sum())) ")" } }
                table.list { tbody {
                    @for (i, l) in layers.iter().enumerate() {
                        tr {
                            td.num { (i + 1) }
                            td { @if let Some(d) = l["digest"].as_str() { (view::digest(d)) } }
                            td { code.small { (l["mediaType"].as_str().unwrap_or("")) } }
                            td.num { (view::bytes(l["size"].as_u64().unwrap_or(0))) }
                        }
                    }
                } }
            }
        }
        (annotations(&json["annotations"]))
        @if !referrers.is_empty() {
            section.card #manifest-referrers {
                h2 { "Referrers" }
                ul { @for (d, t) in &referrers {
                    li { a href=(link(d.as_str())) { (view::short_digest(d.as_str())) } " " code { (t.as_deref().unwrap_or("(no artifactType)")) } }
                } }
            }
        }
        section.card {
            h2 { "Raw JSON " button.copy type="button" data-copy=(raw) { "Copy" } }
            pre.raw { (raw) }
        }
    };
    Ok(viewer.respond(view::layout(
        &chrome(app, &title, viewer, Nav::Repositories, &shown),
        body,
    )))
}

fn descriptor(d: &Value) -> Markup {
    html! {
        dl.kv {
            dt { "digest" } dd { @if let Some(s) = d["digest"].as_str() { (view::digest(s)) } }
            dt { "media type" } dd { code { (d["mediaType"].as_str().unwrap_or("")) } }
            dt { "size" } dd { (view::bytes(d["size"].as_u64().unwrap_or(0))) }
        }
    }
}

fn annotations(a: &Value) -> Markup {
    html! {
        @if let Some(map) = a.as_object() {
            @if !map.is_empty() {
                section.card #annotations {
                    h2 { "Annotations" }
                    dl.kv {
                        @for (k, v) in map {
                            dt { (k) }
                            dd { (v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())) }
                        }
                    }
                }
            }
        }
    }
}
