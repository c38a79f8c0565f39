//! `POST /v2/_ferro/gc/run[?dry_run=true]`: a garbage collection now, with
//! the server's settings (`[gc]` and `history.retention`); answers the
//! report as JSON. 409 while another run is under way.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::request::query_param;
use super::super::App;
use crate::gc::GcError;

pub async fn run(app: &Arc<App>, query: &str) -> ApiResult<Response> {
    let gc = app.gc.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unsupported,
            "this server does not collect garbage",
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
    })?;
    let dry_run = match query_param(query, "dry_run").as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("dry_run must be true or false, not {other:?}"),
            )
            .with_status(StatusCode::BAD_REQUEST))
        }
    };
    match gc.collector.run(&gc.options(dry_run)).await {
        Ok(report) => Ok(axum::Json(report).into_response()),
        Err(GcError::Busy) => Err(ApiError::new(
            ErrorCode::Unsupported,
            "a garbage collection is already running",
        )
        .with_status(StatusCode::CONFLICT)),
        Err(e) => Err(ApiError::internal(e)),
    }
}
