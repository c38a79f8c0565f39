//! One module per page: each gathers what it shows from the readers and
//! renders it with its own template inside the shared layout (`view`).

pub mod admin;
pub mod history;
pub mod login;
pub mod manifest;
pub mod overview;
pub mod repositories;
pub mod repository;

use super::view::{Chrome, Nav};
use super::{Shown, Viewer};
use crate::api::App;

/// The frame of a page for `viewer`, marked as the past when `shown` is.
pub(super) fn chrome<'a>(
    app: &App,
    title: &'a str,
    viewer: &'a Viewer,
    nav: Nav,
    shown: &'a Shown,
) -> Chrome<'a> {
    let past = shown.at().map(|at| {
        let (seq, time) = shown.read(|s| (s.last_seq, s.last_time_unix_ns));
        (at, seq, time)
    });
    Chrome {
        title,
        viewer: Some(viewer),
        admin: viewer.admin(app),
        nav,
        past,
    }
}

/// Parses a 1-based page number (`page=`), 1 when absent or bad.
pub(super) fn page_number(query: &str) -> usize {
    crate::api::request::query_param(query, "page")
        .and_then(|p| p.parse().ok())
        .filter(|&p| p >= 1)
        .unwrap_or(1)
}

/// Rows per page of the lists.
pub(super) const ROWS_PER_PAGE: usize = 50;

/// `(first index, last index exclusive, pages)` of page `page` of `total`.
pub(super) fn page_bounds(total: usize, page: usize) -> (usize, usize, usize, usize) {
    let pages = total.div_ceil(ROWS_PER_PAGE).max(1);
    let page = page.min(pages);
    let start = (page - 1) * ROWS_PER_PAGE;
    (start, (start + ROWS_PER_PAGE).min(total), page, pages)
}
