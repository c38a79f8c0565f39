//! Request bodies: distribution's notification envelope and CloudEvents
//! 1.0 structured JSON, from log entries. Both carry stable event ids,
//! `<seq>-<index>` (the record's sequence number and the event's place in
//! its entry), so a receiver deduplicates redeliveries by id.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use super::config::Format;
use crate::events::{Actor, Event, LinkSource};
use crate::feed::FeedEntry;
use crate::oci::{Digest, RepoName};
use crate::timefmt::rfc3339;

/// distribution's envelope media type.
pub const DISTRIBUTION_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
pub const CLOUDEVENTS_MEDIA_TYPE: &str = "application/cloudevents+json";
pub const CLOUDEVENTS_BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";
/// A blob's media type in a distribution event (the log does not keep one).
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// The distribution action of an event, when it has one: events with none
/// (uploads, garbage collection, ...) are not sent in that format.
pub fn action(event: &Event) -> Option<&'static str> {
    match event {
        Event::ManifestPut { .. } | Event::TagSet { .. } => Some("push"),
        Event::BlobLinked { source, .. } => Some(match source {
            LinkSource::Upload { .. } => "push",
            LinkSource::Mount { .. } => "mount",
        }),
        Event::ManifestDeleted { .. } | Event::TagDeleted { .. } | Event::BlobUnlinked { .. } => {
            Some("delete")
        }
        _ => None,
    }
}

/// The CloudEvents `type` of an event.
pub fn cloudevents_type(event: &Event) -> &'static str {
    match event {
        Event::ManifestPut { .. } => "dev.ferro.manifest.pushed",
        Event::TagSet { .. } => "dev.ferro.tag.set",
        Event::TagDeleted { .. } => "dev.ferro.tag.deleted",
        Event::ManifestDeleted { .. } => "dev.ferro.manifest.deleted",
        Event::BlobLinked { .. } => "dev.ferro.blob.linked",
        Event::BlobUnlinked { .. } => "dev.ferro.blob.unlinked",
        Event::BlobDeleted { .. } => "dev.ferro.blob.deleted",
        Event::UploadStarted { .. } => "dev.ferro.upload.started",
        Event::UploadChunk { .. } => "dev.ferro.upload.chunk",
        Event::UploadCompleted { .. } => "dev.ferro.upload.completed",
        Event::UploadCancelled { .. } => "dev.ferro.upload.cancelled",
        Event::ReferrerRegistered { .. } => "dev.ferro.referrer.registered",
        Event::GcCompleted { .. } => "dev.ferro.gc.completed",
        Event::NotificationCursorMoved { .. } => "dev.ferro.notifications.cursor_moved",
        Event::MultipartStarted { .. } => "dev.ferro.upload.multipart_started",
        Event::PartStored { .. } => "dev.ferro.upload.part_stored",
        Event::BlobObjectStored { .. } => "dev.ferro.blob.object_stored",
        Event::MultipartAborted { .. } => "dev.ferro.upload.multipart_aborted",
    }
}

pub const GAP_TYPE: &str = "dev.ferro.notifications.gap";
pub const GAP_ACTION: &str = "ferro.gap";

/// A manifest's media type and size, looked up when an event lacks them
/// (a tag move names only the digest).
pub type ManifestLookup<'a> = &'a dyn Fn(&RepoName, &Digest) -> Option<(String, u64)>;

/// What one request carries.
pub enum Batch<'a> {
    Entries(&'a [FeedEntry]),
    /// Entries `from_seq..=to_seq` left the live log before the endpoint
    /// acknowledged them (history retention over `hold`).
    Gap {
        from_seq: u64,
        to_seq: u64,
        now_unix_ns: u64,
    },
}

/// One event as sent, serialized straight from borrowed parts of the entry
/// (building `serde_json::Value` trees first cost most of a delivery's
/// CPU: every key and string allocated, sorted and freed again).
#[derive(Serialize)]
#[serde(untagged)]
enum Out<'a> {
    Distribution(DistributionEvent<'a>),
    Cloud(CloudEvent<'a>),
    Gap(Value),
}

/// distribution's envelope.
#[derive(Serialize)]
struct Envelope<'a> {
    events: &'a [Out<'a>],
}

/// An event as distribution's documentation describes it, plus `ferro`
/// (the entry's sequence number and the event's index).
#[derive(Serialize)]
struct DistributionEvent<'a> {
    id: String,
    timestamp: &'a str,
    action: &'static str,
    target: Target<'a>,
    request: Request<'a>,
    actor: Named<'a>,
    source: Source<'a>,
    ferro: Position,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Target<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    digest: &'a Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_repository: Option<&'a str>,
    repository: &'a str,
}

#[derive(Serialize)]
struct Request<'a> {
    id: &'static str,
    addr: &'a str,
    host: &'a str,
    method: &'static str,
    useragent: &'static str,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Source<'a> {
    addr: &'a str,
    #[serde(rename = "instanceID")]
    instance_id: &'static str,
}

#[derive(Serialize)]
struct Position {
    seq: u64,
    index: u32,
}

/// A CloudEvents 1.0 event in structured JSON.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    datacontenttype: &'static str,
    ferroseq: u64,
    data: CloudData<'a>,
}

#[derive(Serialize)]
struct CloudData<'a> {
    seq: u64,
    index: u32,
    actor: &'a Actor,
    event: &'a Event,
}

/// A request body and its content type; `None` when no event of the batch
/// exists in the format (the cursor moves on without a request).
pub fn body(
    format: Format,
    source: &str,
    batch: &Batch<'_>,
    lookup: ManifestLookup<'_>,
    batch_max: usize,
) -> Option<(Bytes, &'static str)> {
    let host = source_host(source);
    let events: Vec<Out<'_>> = match batch {
        Batch::Entries(entries) => entries
            .iter()
            .flat_map(|entry| {
                entry
                    .events
                    .iter()
                    .zip(&entry.indexes)
                    .filter_map(move |(e, i)| match format {
                        Format::Distribution => {
                            distribution_event(source, host, entry, *i, e, lookup)
                                .map(Out::Distribution)
                        }
                        Format::Cloudevents => Some(Out::Cloud(cloudevent(source, entry, *i, e))),
                    })
            })
            .collect(),
        Batch::Gap {
            from_seq,
            to_seq,
            now_unix_ns,
        } => vec![Out::Gap(gap_event(
            format,
            source,
            *from_seq,
            *to_seq,
            *now_unix_ns,
        ))],
    };
    if events.is_empty() {
        return None;
    }
    let (bytes, content_type) = match format {
        Format::Distribution => (
            serde_json::to_vec(&Envelope { events: &events }),
            DISTRIBUTION_MEDIA_TYPE,
        ),
        Format::Cloudevents if batch_max == 1 && events.len() == 1 => {
            (serde_json::to_vec(&events[0]), CLOUDEVENTS_MEDIA_TYPE)
        }
        Format::Cloudevents => (serde_json::to_vec(&events), CLOUDEVENTS_BATCH_MEDIA_TYPE),
    };
    Some((Bytes::from(bytes.ok()?), content_type))
}

pub fn event_id(seq: u64, index: u32) -> String {
    format!("{seq}-{index}")
}

fn distribution_event<'a>(
    source: &str,
    host: &'a str,
    entry: &'a FeedEntry,
    index: u32,
    event: &'a Event,
    lookup: ManifestLookup<'_>,
) -> Option<DistributionEvent<'a>> {
    let action = action(event)?;
    let manifest_url =
        |repo: &RepoName, digest: &Digest| format!("{source}/v2/{repo}/manifests/{digest}");
    let blob_url = |repo: &RepoName, digest: &Digest| format!("{source}/v2/{repo}/blobs/{digest}");
    // The same entry's manifest push, else the state, names a tag's target.
    let manifest_facts = |repo: &RepoName, digest: &Digest| -> Option<(Cow<'a, str>, u64)> {
        entry
            .events
            .iter()
            .find_map(|e| match e {
                Event::ManifestPut {
                    repo: r,
                    digest: d,
                    media_type,
                    body,
                    ..
                } if r == repo && d == digest => {
                    Some((Cow::Borrowed(media_type.as_str()), body.len() as u64))
                }
                _ => None,
            })
            .or_else(|| lookup(repo, digest).map(|(m, size)| (Cow::Owned(m), size)))
    };
    let target = |repo: &'a RepoName, digest: &'a Digest| Target {
        media_type: None,
        size: None,
        length: None,
        digest,
        tag: None,
        url: None,
        from_repository: None,
        repository: repo.as_str(),
    };
    let target = match event {
        Event::ManifestPut {
            repo,
            digest,
            media_type,
            body,
            ..
        } => Target {
            media_type: Some(Cow::Borrowed(media_type.as_str())),
            size: Some(body.len() as u64),
            length: Some(body.len() as u64),
            url: Some(manifest_url(repo, digest)),
            ..target(repo, digest)
        },
        Event::TagSet {
            repo, tag, digest, ..
        }
        | Event::TagDeleted {
            repo, tag, digest, ..
        } => {
            let facts = manifest_facts(repo, digest);
            let size = facts.as_ref().map(|(_, size)| *size);
            Target {
                media_type: facts.map(|(media_type, _)| media_type),
                size,
                length: size,
                tag: Some(tag.as_str()),
                url: Some(manifest_url(repo, digest)),
                ..target(repo, digest)
            }
        }
        Event::ManifestDeleted { repo, digest } | Event::BlobUnlinked { repo, digest } => {
            target(repo, digest)
        }
        Event::BlobLinked {
            repo,
            digest,
            size,
            source: link,
        } => Target {
            media_type: Some(Cow::Borrowed(BLOB_MEDIA_TYPE)),
            size: Some(*size),
            length: Some(*size),
            url: Some(blob_url(repo, digest)),
            from_repository: match link {
                LinkSource::Mount { from: Some(from) } => Some(from.as_str()),
                _ => None,
            },
            ..target(repo, digest)
        },
        _ => return None,
    };
    let method = match action {
        "delete" => "DELETE",
        _ if matches!(event, Event::BlobLinked { .. }) => "POST",
        _ => "PUT",
    };
    Some(DistributionEvent {
        id: event_id(entry.seq, index),
        timestamp: &entry.time,
        action,
        target,
        request: Request {
            id: "",
            addr: entry.actor.peer.as_deref().unwrap_or_default(),
            host,
            method,
            useragent: "",
        },
        actor: Named {
            name: entry.actor.user.as_deref().unwrap_or_default(),
        },
        source: Source {
            addr: host,
            instance_id: "",
        },
        ferro: Position {
            seq: entry.seq,
            index,
        },
    })
}

fn cloudevent<'a>(
    source: &'a str,
    entry: &'a FeedEntry,
    index: u32,
    event: &'a Event,
) -> CloudEvent<'a> {
    CloudEvent {
        specversion: "1.0",
        id: event_id(entry.seq, index),
        source,
        kind: cloudevents_type(event),
        time: &entry.time,
        subject: event.repo().map(RepoName::as_str),
        datacontenttype: "application/json",
        ferroseq: entry.seq,
        data: CloudData {
            seq: entry.seq,
            index,
            actor: &entry.actor,
            event,
        },
    }
}

fn gap_event(format: Format, source: &str, from_seq: u64, to_seq: u64, now_unix_ns: u64) -> Value {
    let id = format!("gap-{from_seq}-{to_seq}");
    let gap = json!({ "from_seq": from_seq, "to_seq": to_seq });
    match format {
        Format::Distribution => json!({
            "id": id,
            "timestamp": rfc3339(now_unix_ns),
            "action": GAP_ACTION,
            "target": {},
            "source": { "addr": source_host(source), "instanceID": "" },
            "gap": gap,
        }),
        Format::Cloudevents => json!({
            "specversion": "1.0",
            "id": id,
            "source": source,
            "type": GAP_TYPE,
            "time": rfc3339(now_unix_ns),
            "datacontenttype": "application/json",
            "data": gap,
        }),
    }
}

/// `host:port` of a source URL (distribution's `source.addr`).
fn source_host(source: &str) -> &str {
    let rest = source.split_once("://").map_or(source, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Actor;
    use crate::oci::Tag;

    fn entry() -> FeedEntry {
        let repo = RepoName::parse("team/app").unwrap();
        let body = Bytes::from_static(b"{\"schemaVersion\":2}");
        let digest = Digest::sha256_of(&body);
        FeedEntry {
            seq: 7,
            time: rfc3339(1_764_000_000_000_000_000),
            time_unix_ns: 1_764_000_000_000_000_000,
            actor: Actor {
                user: Some("alice".into()),
                peer: Some("10.0.0.1:5555".into()),
            },
            events: vec![
                Event::ManifestPut {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    body,
                    blobs: vec![],
                    manifests: vec![],
                    subject: None,
                    artifact_type: None,
                },
                Event::TagSet {
                    repo,
                    tag: Tag::parse("v1").unwrap(),
                    digest,
                    previous: None,
                },
            ],
            indexes: vec![0, 1],
        }
    }

    #[test]
    fn distribution_envelope_has_the_documented_fields() {
        let entries = [entry()];
        let (bytes, ct) = body(
            Format::Distribution,
            "https://registry.example",
            &Batch::Entries(&entries),
            &|_, _| None,
            10,
        )
        .unwrap();
        assert_eq!(ct, DISTRIBUTION_MEDIA_TYPE);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        let tag = &events[1];
        assert_eq!(tag["id"], "7-1");
        assert_eq!(tag["action"], "push");
        assert_eq!(tag["target"]["tag"], "v1");
        assert_eq!(tag["target"]["repository"], "team/app");
        assert_eq!(tag["target"]["size"], 19, "taken from the same entry's put");
        assert_eq!(
            tag["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(tag["actor"]["name"], "alice");
        assert_eq!(tag["request"]["addr"], "10.0.0.1:5555");
        assert_eq!(tag["source"]["addr"], "registry.example");
        assert!(tag["target"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://registry.example/v2/team/app/manifests/sha256:"));
    }

    #[test]
    fn cloudevents_are_structured_with_stable_ids() {
        let entries = [entry()];
        let batch = Batch::Entries(&entries);
        let (bytes, ct) = body(Format::Cloudevents, "/r", &batch, &|_, _| None, 10).unwrap();
        assert_eq!(ct, CLOUDEVENTS_BATCH_MEDIA_TYPE);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v[0]["specversion"], "1.0");
        assert_eq!(v[0]["type"], "dev.ferro.manifest.pushed");
        assert_eq!(v[0]["id"], "7-0");
        assert_eq!(v[0]["subject"], "team/app");
        assert_eq!(v[1]["data"]["event"]["TagSet"]["tag"], "v1");
        let (again, _) = body(Format::Cloudevents, "/r", &batch, &|_, _| None, 10).unwrap();
        assert_eq!(bytes, again, "the same entries give the same body");
    }

    #[test]
    fn events_without_an_action_are_not_sent_as_distribution() {
        let mut e = entry();
        e.events = vec![Event::GcCompleted {
            mark_seq: 1,
            manifests_deleted: 0,
            blobs_deleted: 0,
            bytes_freed: 0,
            orphans_removed: 0,
            orphan_bytes_freed: 0,
            duration_ms: 0,
        }];
        e.indexes = vec![0];
        let entries = [e];
        let batch = Batch::Entries(&entries);
        assert!(body(Format::Distribution, "/r", &batch, &|_, _| None, 10).is_none());
        assert!(body(Format::Cloudevents, "/r", &batch, &|_, _| None, 10).is_some());
    }
}
