//! The shared layout and components of every page: the frame (navigation,
//! the user, the "past" banner), digests with copy buttons, times shown
//! relative and absolute, sizes, pagers and the forms' CSRF field. Pages
//! are maud templates, so every value is escaped unless a template says
//! otherwise (none does).

use axum::http::StatusCode;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::Viewer;
use crate::timefmt::rfc3339;

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Repositories,
    AsOf,
    Admin,
    None,
}

/// What the frame of a page needs.
pub struct Chrome<'a> {
    pub title: &'a str,
    pub viewer: Option<&'a Viewer>,
    pub admin: bool,
    pub nav: Nav,
    /// Showing the past: the point asked for, and the last entry of the
    /// state shown (sequence number, time).
    pub past: Option<(&'a str, u64, u64)>,
}

pub fn html(page: Markup) -> Html<String> {
    Html(page.into_string())
}

pub fn layout(c: &Chrome, body: Markup) -> Markup {
    let item = |nav: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class=[(c.nav == nav).then_some("active")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (c.title) " · ferro" }
                link rel="stylesheet" href="/ui/static/style.css";
                script src="/ui/static/ui.js" defer {}
            }
            body class=[c.past.is_some().then_some("past")] {
                header.top {
                    a.brand href="/ui/" { span.logo { "◆" } " ferro" }
                    nav {
                        (item(Nav::Overview, "/ui/", "Overview"))
                        (item(Nav::Repositories, "/ui/repositories", "Repositories"))
                        (item(Nav::AsOf, "/ui/asof", "As of"))
                        @if c.admin { (item(Nav::Admin, "/ui/admin", "Administration")) }
                    }
                    @if let Some(v) = c.viewer {
                        @if let Some(user) = &v.user {
                            form.user method="post" action="/ui/logout" {
                                span { (user) }
                                (csrf(v))
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                @if let Some((at, seq, time)) = c.past {
                    div.banner.past-banner role="status" {
                        strong { "The past: " }
                        "the registry as it was at " code { (at) }
                        " (entry #" (seq) @if time > 0 { ", " (timestamp(time)) } ")"
                        ". Nothing here can be changed. "
                        a href="/ui/" { "Back to now" }
                    }
                }
                main { (body) }
                footer { "ferro · every change is an entry in the log" }
            }
        }
    }
}

pub fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    layout(
        &Chrome {
            title,
            viewer: None,
            admin: false,
            nav: Nav::None,
            past: None,
        },
        html! {
            section.card.error {
                h1 { (status.as_u16()) " " (title) }
                p { (message) }
                p { a href="/ui/" { "Overview" } }
            }
        },
    )
}

pub fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf()); }
}

/// The first 12 hex digits after the algorithm.
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => d.chars().take(19).collect(),
    }
}

/// A shortened digest with the whole one in its title and a copy button.
pub fn digest(d: &str) -> Markup {
    html! {
        span.digest {
            code title=(d) { (short_digest(d)) }
            button.copy type="button" data-copy=(d) title="Copy the digest" { "copy" }
        }
    }
}

/// The artifact type worth showing: not the config media type that an
/// ordinary image's manifest reports as its type.
pub fn artifact_type(t: Option<&str>) -> Option<&str> {
    t.filter(|t| {
        !matches!(
            *t,
            "application/vnd.oci.image.config.v1+json"
                | "application/vnd.docker.container.image.v1+json"
        )
    })
}

/// A command line with a copy button.
pub fn command(cmd: &str) -> Markup {
    html! {
        div.cmd {
            code { (cmd) }
            button.copy type="button" data-copy=(cmd) title="Copy" { "Copy" }
        }
    }
}

/// A time, relative ("5 minutes ago", kept fresh by the script) with the
/// absolute time beside it.
pub fn timestamp(time_unix_ns: u64) -> Markup {
    let abs = rfc3339(time_unix_ns);
    let short = abs.get(..19).unwrap_or(&abs).replace('T', " ");
    html! {
        time datetime=(abs) title=(abs) data-ns=(time_unix_ns) {
            span.rel { (relative(time_unix_ns, now_unix_ns())) }
            " " span.abs { (short) " UTC" }
        }
    }
}

pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn relative(then_ns: u64, now_ns: u64) -> String {
    let s = now_ns.saturating_sub(then_ns) / 1_000_000_000;
    let (n, unit) = match s {
        0..=44 => return "just now".into(),
        45..=5399 => (s.div_ceil(60).max(1), "minute"),
        5400..=129_599 => ((s + 1800) / 3600, "hour"),
        _ => ((s + 43_200) / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `href` of a page with the past point kept.
pub fn with_at(href: &str, at: Option<&str>) -> String {
    match at {
        None => href.to_owned(),
        Some(at) => {
            let at: String = form_urlencoded::byte_serialize(at.as_bytes()).collect();
            let sep = if href.contains('?') { '&' } else { '?' };
            format!("{href}{sep}at={at}")
        }
    }
}

pub fn query_value(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// "Page N of M" with previous/next links; `href(page)` builds a link.
pub fn pager(page: usize, pages: usize, href: &dyn Fn(usize) -> String) -> Markup {
    html! {
        @if pages > 1 {
            nav.pager aria-label="pages" {
                @if page > 1 { a href=(href(1)) { "« first" } a href=(href(page - 1)) rel="prev" { "‹ previous" } }
                span { "page " (page) " of " (pages) }
                @if page < pages { a href=(href(page + 1)) rel="next" { "next ›" } a href=(href(pages)) { "last »" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let s = 1_000_000_000u64;
        let now = 10_000_000 * s;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - 60 * s, now), "1 minute ago");
        assert_eq!(relative(now - 600 * s, now), "10 minutes ago");
        assert_eq!(relative(now - 3 * 3600 * s, now), "3 hours ago");
        assert_eq!(relative(now - 3 * 86_400 * s, now), "3 days ago");
    }

    #[test]
    fn sizes_and_digests() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }

    #[test]
    fn values_are_escaped() {
        let page = html! { p { ("<script>alert(1)</script>") } }.into_string();
        assert_eq!(page, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
    }
}
