//! The object store's metrics: every operation ferro asks of the store
//! (by operation and outcome, with its latency), and every HTTP attempt
//! object_store makes for it (bytes out and in, and retries), through an
//! HTTP connector that wraps the crate's own. Names are in
//! `crate::metrics`.
//!
//! A retry is an attempt after the first within one operation: the
//! operation's future carries a task-local count that the connector
//! bumps, since object_store retries inside the future it returns.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

use crate::metrics::{
    OBJECT_STORE_BYTES_IN, OBJECT_STORE_BYTES_OUT, OBJECT_STORE_REQUESTS,
    OBJECT_STORE_REQUEST_SECONDS, OBJECT_STORE_RETRIES,
};

tokio::task_local! {
    /// The operation being run and the HTTP attempts made for it so far.
    static OPERATION: (&'static str, Cell<u32>);
}

/// Runs one operation on the store, counting it by `operation` and
/// outcome (`ok`, `not_found`, `error`) and timing it, retries included.
pub async fn operation<T>(
    operation: &'static str,
    request: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let started = Instant::now();
    let result = OPERATION.scope((operation, Cell::new(0)), request).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(_) => "error",
    };
    record(operation, outcome, started);
    result
}

/// Counts and times an operation sent outside object_store (a presigned
/// request), which [`operation`] cannot wrap.
pub fn record(operation: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!(OBJECT_STORE_REQUESTS, "operation" => operation, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(OBJECT_STORE_REQUEST_SECONDS, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

/// object_store's HTTP connector, metered.
#[derive(Debug, Default)]
pub struct MeteredConnector;

impl HttpConnector for MeteredConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Metered(inner)))
    }
}

#[derive(Debug)]
struct Metered(HttpClient);

type Answer<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>>;

impl HttpService for Metered {
    // `HttpService` is an `async_trait`: this is its desugared signature.
    fn call<'s, 'a>(&'s self, request: HttpRequest) -> Answer<'a>
    where
        's: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            let (operation, earlier) = OPERATION
                .try_with(|(op, attempts)| {
                    let n = attempts.get();
                    attempts.set(n + 1);
                    (*op, n)
                })
                .unwrap_or(("other", 0));
            if earlier > 0 {
                metrics::counter!(OBJECT_STORE_RETRIES, "operation" => operation).increment(1);
            }
            metrics::counter!(OBJECT_STORE_BYTES_OUT)
                .increment(request.body().content_length() as u64);
            let answer = self.0.execute(request).await;
            if let Ok(response) = &answer {
                let length = response
                    .headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(length) = length {
                    metrics::counter!(OBJECT_STORE_BYTES_IN).increment(length);
                }
            }
            answer
        })
    }
}
