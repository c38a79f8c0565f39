//! How a log line is written, and how it names the request it belongs to.
//!
//! Every line written while a request is served carries the request's
//! id, method and path, in the text log as a leading
//! `request{id=… method=… path=…}:` and in the JSON log as
//! `"span":{"id":…,"method":…,"path":…,"name":"request"}` — what a
//! tracing span named `request` printed, which is what this replaces.
//!
//! Why not a span: a tracing span per request (a slot in the
//! subscriber's registry, its fields formatted when made, entered and left
//! on every poll, closed and its text freed) was paid whether or not a
//! line was written, and most requests write none; replacing it took a
//! HEAD of a manifest from 22,823 to 19,942 instructions (callgrind,
//! `benches/callgrind/head.py`). Here the request is a
//! task-local value ([`RequestLabel::scope`]: a swap in and out of a
//! thread-local per poll), read only by the formatters below when a line
//! is written.
//!
//! What is not in the request's task, a `spawn_blocking` closure or a
//! spawned task, writes lines without it, as it did without the span
//! (no span was carried over either).

use std::fmt;
use std::future::Future;

use axum::http::{HeaderValue, Uri};
use tokio::task::futures::TaskLocalFuture;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST: RequestLabel;
}

/// The request a log line belongs to.
#[derive(Debug, Clone)]
pub struct RequestLabel {
    /// `x-request-id`, taken from the request or made.
    pub id: HeaderValue,
    pub method: &'static str,
    /// The request's target; the line shows its path.
    pub uri: Uri,
}

impl RequestLabel {
    /// `served`, with every line it writes naming this request. The label
    /// is taken back from the future once it is done
    /// ([`TaskLocalFuture::take_value`]): its id goes on in the response.
    pub fn scope<F: Future>(self, served: F) -> TaskLocalFuture<RequestLabel, F> {
        REQUEST.scope(self, served)
    }

    /// `f`, with every line it writes naming this request.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        REQUEST.sync_scope(self.clone(), f)
    }

    fn id(&self) -> &str {
        // A header value that is not visible ASCII is shown as nothing,
        // as the span showed it.
        self.id.to_str().unwrap_or("")
    }
}

/// The text log's lines: `<time> <LEVEL> request{…}:<spans>: <target>:
/// <fields>`, as tracing-subscriber's default ("full") format writes them
/// with the request's span, coloured when `ansi`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextLines;

const RESET: &str = "\x1b[0m";
const DIMMED: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let ansi = writer.has_ansi_escapes();
        let paint = |writer: &mut Writer<'_>, style: &str, text: &str| {
            if ansi {
                write!(writer, "{style}{text}{RESET}")
            } else {
                writer.write_str(text)
            }
        };
        if ansi {
            writer.write_str(DIMMED)?;
        }
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        if ansi {
            writer.write_str(RESET)?;
        }
        writer.write_char(' ')?;
        let (colour, level) = match *meta.level() {
            Level::TRACE => ("\x1b[35m", "TRACE"),
            Level::DEBUG => ("\x1b[34m", "DEBUG"),
            Level::INFO => ("\x1b[32m", " INFO"),
            Level::WARN => ("\x1b[33m", " WARN"),
            Level::ERROR => ("\x1b[31m", "ERROR"),
        };
        paint(&mut writer, colour, level)?;
        writer.write_char(' ')?;

        let mut spans = false;
        if let Ok(written) = REQUEST.try_with(|request| {
            paint(&mut writer, BOLD, "request")?;
            paint(&mut writer, BOLD, "{")?;
            write!(
                writer,
                "id={} method={} path={}",
                request.id(),
                request.method,
                request.uri.path()
            )?;
            paint(&mut writer, BOLD, "}")?;
            paint(&mut writer, DIMMED, ":")
        }) {
            written?;
            spans = true;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                paint(&mut writer, BOLD, span.metadata().name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        paint(&mut writer, BOLD, "{")?;
                        writer.write_str(fields)?;
                        paint(&mut writer, BOLD, "}")?;
                    }
                }
                paint(&mut writer, DIMMED, ":")?;
                spans = true;
            }
        }
        if spans {
            writer.write_char(' ')?;
        }
        paint(&mut writer, DIMMED, meta.target())?;
        paint(&mut writer, DIMMED, ":")?;
        writer.write_char(' ')?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The JSON log's lines: tracing-subscriber's JSON format, one object per
/// line, with the request as `"span"` when there is one.
pub struct JsonLines {
    inner: Format<Json, SystemTime>,
}

impl JsonLines {
    /// Event fields at the top level; tracing spans, which only
    /// dependencies open (at debug level and below), as a `"spans"` list.
    pub fn new() -> JsonLines {
        JsonLines {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true),
        }
    }
}

impl Default for JsonLines {
    fn default() -> JsonLines {
        JsonLines::new()
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Ok(span) = REQUEST.try_with(|request| {
            serde_json::json!({
                "id": request.id(),
                "method": request.method,
                "path": request.uri.path(),
                "name": "request",
            })
            .to_string()
        }) else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The object the inner format writes opens with `{`: the request
        // goes in as its first member.
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let rest = line.strip_prefix('{').ok_or(fmt::Error)?;
        writer.write_str("{\"span\":")?;
        writer.write_str(&span)?;
        if !rest.starts_with('}') {
            writer.write_char(',')?;
        }
        writer.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logfields::tests::Captured;
    use crate::logfields::PlainFields;

    fn label() -> RequestLabel {
        RequestLabel {
            id: HeaderValue::from_static("ab12-7"),
            method: "HEAD",
            uri: "/v2/a/b/manifests/latest?n=1".parse().unwrap(),
        }
    }

    /// Logs in a request's scope and outside it, on a runtime, with
    /// `subscriber` made for the captured output.
    fn logged<S>(make: impl FnOnce(Captured) -> S) -> String
    where
        S: Subscriber + Send + Sync + 'static,
    {
        let out = Captured::default();
        let subscriber = make(out.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let mut scoped = std::pin::pin!(label().scope(async {
                    tracing::warn!(status = 503u16, "it failed");
                    tokio::task::yield_now().await;
                    let span = tracing::info_span!("inner", n = 3);
                    let _entered = span.enter();
                    tracing::info!(latency_us = 12u64, "answered");
                }));
                scoped.as_mut().await;
                let label = scoped.take_value().expect("the label comes back");
                label.in_scope(|| tracing::info!(latency_us = 13u64, "answered"));
                tracing::info!("outside");
            })
        });
        out.text()
    }

    #[test]
    fn text_lines_name_the_request() {
        let text = logged(|out| {
            tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .fmt_fields(PlainFields)
                .event_format(TextLines)
                .finish()
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].ends_with(
                " WARN request{id=ab12-7 method=HEAD path=/v2/a/b/manifests/latest}: \
                 ferro::logline::tests: it failed status=503"
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                " INFO request{id=ab12-7 method=HEAD path=/v2/a/b/manifests/latest}:inner{n=3}: \
                 ferro::logline::tests: answered latency_us=12"
            ),
            "{text}"
        );
        assert!(
            lines[2].ends_with(
                " INFO request{id=ab12-7 method=HEAD path=/v2/a/b/manifests/latest}: \
                 ferro::logline::tests: answered latency_us=13"
            ),
            "{text}"
        );
        assert!(
            lines[3].ends_with(" INFO ferro::logline::tests: outside"),
            "{text}"
        );
        // A timestamp leads every line.
        assert!(lines.iter().all(|l| l.starts_with("20")), "{text}");
    }

    #[test]
    fn coloured_text_lines_still_name_the_request() {
        let text = logged(|out| {
            tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(true)
                .event_format(TextLines)
                .finish()
        });
        let first = text.lines().next().unwrap();
        assert!(first.contains("\x1b[33m WARN\x1b[0m"), "{first:?}");
        assert!(
            first.contains("id=ab12-7 method=HEAD path=/v2/a/b/manifests/latest"),
            "{first:?}"
        );
    }

    #[test]
    fn json_lines_carry_the_request_as_their_span() {
        let text = logged(|out| {
            tracing_subscriber::fmt()
                .json()
                .with_writer(move || out.clone())
                .event_format(JsonLines::new())
                .finish()
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        for line in &lines[..3] {
            assert_eq!(line["span"]["id"], "ab12-7", "{line}");
            assert_eq!(line["span"]["method"], "HEAD", "{line}");
            assert_eq!(line["span"]["path"], "/v2/a/b/manifests/latest", "{line}");
            assert_eq!(line["span"]["name"], "request", "{line}");
            assert!(line["timestamp"].is_string() && line["level"].is_string());
        }
        assert_eq!(lines[0]["status"], 503);
        assert_eq!(lines[0]["message"], "it failed");
        assert_eq!(lines[1]["spans"][0]["name"], "inner", "{}", lines[1]);
        assert_eq!(lines[2]["latency_us"], 13);
        assert!(lines[3].get("span").is_none(), "{}", lines[3]);
        assert_eq!(lines[3]["message"], "outside");
    }
}
