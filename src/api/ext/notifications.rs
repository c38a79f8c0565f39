//! `GET /v2/_ferro/notifications`: each notification endpoint's cursor,
//! lag (entries and seconds), last error and failing state.
//! `POST /v2/_ferro/notifications?endpoint=<name>&replay_from=<seq>` sends
//! an endpoint everything again from a sequence number;
//! `…&to=end` skips it past everything committed. A move is an event on
//! the record (`NotificationCursorMoved`) before the cursor changes.
//! Both need delete on every repository (the access table's default for
//! `_ferro` endpoints that name no repository).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::{ApiError, ApiResult, ErrorCode};
use super::super::request::{query_param, RequestContext};
use super::super::App;
use crate::notify::{MoveError, MoveTo};

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
}

pub async fn get(app: &Arc<App>) -> ApiResult<Response> {
    let endpoints = app
        .notifier
        .as_ref()
        .map(|n| n.status())
        .unwrap_or_default();
    Ok(axum::Json(json!({
        "last_seq": app.writer.tip().seq(),
        "endpoints": endpoints,
    }))
    .into_response())
}

pub async fn post(app: &Arc<App>, ctx: &RequestContext, query: &str) -> ApiResult<Response> {
    let name = query_param(query, "endpoint")
        .ok_or_else(|| bad("the endpoint parameter (an endpoint's name) is required".into()))?;
    let to = match (
        query_param(query, "replay_from"),
        query_param(query, "to").as_deref(),
    ) {
        (Some(seq), None) => MoveTo::ReplayFrom(
            seq.parse()
                .ok()
                .filter(|n: &u64| *n >= 1)
                .ok_or_else(|| bad(format!("replay_from={seq:?} is not a sequence number")))?,
        ),
        (None, Some("end")) => MoveTo::End,
        _ => {
            return Err(bad(
                "give either replay_from=<sequence number> or to=end".into()
            ))
        }
    };
    let notifier = app.notifier.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unsupported,
            format!("no notification endpoint is named {name:?}"),
        )
        .with_status(StatusCode::NOT_FOUND)
    })?;
    match notifier.move_cursor(ctx.actor(), &name, to).await {
        Ok((from_seq, to_seq)) => Ok(axum::Json(json!({
            "endpoint": name,
            "from_seq": from_seq,
            "to_seq": to_seq,
        }))
        .into_response()),
        Err(e @ MoveError::UnknownEndpoint(_)) => {
            Err(ApiError::new(ErrorCode::Unsupported, e.to_string())
                .with_status(StatusCode::NOT_FOUND))
        }
        Err(e @ MoveError::PastEnd { .. }) => Err(bad(e.to_string())),
        Err(MoveError::Writer(e)) => Err(e.into()),
        Err(MoveError::Cursor(e)) => Err(ApiError::internal(e)),
    }
}
