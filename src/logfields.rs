//! How the text log writes the fields of spans and events when it does not
//! colour them: `name=value`, space separated, the message bare — what
//! tracing-subscriber's default field format writes without ANSI, at a
//! fraction of its cost.
//!
//! Why it exists: the default format styles each name and `=` through
//! `nu_ansi_term` even with colours off, and formats a span's fields when
//! the span is made. When every request made a span, that was about an
//! eighth of a HEAD's instructions; requests now name themselves on their
//! lines without one (`logline`), and this still makes each line cheaper
//! to write (the access log writes one per request). Messages and
//! errors, which are rare and need the default's
//! escaping and error-source list, still go through the default visitor.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The field format of the uncoloured text log.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            out: Gathered {
                writer,
                buf: [0; GATHERED_BYTES],
                len: 0,
            },
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.finish()
    }
}

/// Fields are gathered on the stack and written out in one piece, so a
/// span's text is allocated once at its size rather than grown field by
/// field; a request span's fields take about 80 bytes.
const GATHERED_BYTES: usize = 256;

/// A writer that gathers what is written and passes it on in large
/// pieces (when the buffer is full, and at the end).
struct Gathered<'a> {
    writer: Writer<'a>,
    buf: [u8; GATHERED_BYTES],
    len: usize,
}

impl Gathered<'_> {
    fn flush(&mut self) -> fmt::Result {
        let gathered = std::str::from_utf8(&self.buf[..self.len]).map_err(|_| fmt::Error)?;
        let written = self.writer.write_str(gathered);
        self.len = 0;
        written
    }
}

impl fmt::Write for Gathered<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > self.buf.len() {
            self.flush()?;
            if s.len() > self.buf.len() {
                return self.writer.write_str(s);
            }
        }
        // Whole strings only, so the buffer always holds valid UTF-8.
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

struct PlainVisitor<'a> {
    out: Gathered<'a>,
    /// Whether nothing was written yet (no separating space needed).
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Hands one field to the default visitor (messages, errors).
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        if let Err(e) = self.out.flush() {
            self.result = Err(e);
            return;
        }
        let mut default = DefaultVisitor::new(self.out.writer.by_ref(), self.is_empty);
        record(&mut default);
        self.result = default.finish();
        self.is_empty = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.by_default(|d| d.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(|d| d.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            self.by_default(|d| d.record_debug(field, value));
            return;
        }
        // Metadata of records bridged from the `log` crate, already shown.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let out = &mut self.out;
        self.result = (|| {
            if !self.is_empty {
                out.write_str(" ")?;
            }
            out.write_str(name)?;
            out.write_str("=")?;
            write!(out, "{value:?}")
        })();
        self.is_empty = false;
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        self.result?;
        self.out.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log output captured in memory (also for `logline`'s tests).
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(plain: bool, log: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .without_time();
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        out.text()
    }

    fn sample() {
        let span = tracing::info_span!("request", id = %"ab12-7", method = %"HEAD", path = %"/v2/a/b/manifests/latest");
        let _entered = span.enter();
        let error = std::io::Error::other("disk on fire");
        tracing::warn!(status = 503u16, r#type = "x", quoted = "a b", %error, "it \"failed\"");
        tracing::info!(latency_us = 12u64, "answered");
        // Longer than the gathering buffer, in one field and in many.
        let long = "x".repeat(3 * GATHERED_BYTES);
        tracing::info!(long = %long, a = 1, b = 2, "long");
        tracing::info!(
            f1 = %"a".repeat(100), f2 = %"b".repeat(100), f3 = %"c".repeat(100),
            "several that fill the buffer"
        );
    }

    /// Without colours the plain format writes exactly what the default
    /// one does.
    #[test]
    fn lines_match_the_default_format() {
        let plain = lines(true, sample);
        let default = lines(false, sample);
        assert!(
            plain.contains("request{id=ab12-7 method=HEAD path=/v2/a/b/manifests/latest}"),
            "{plain}"
        );
        assert!(plain.contains("type=\"x\""), "{plain}");
        assert_eq!(plain, default);
    }
}
