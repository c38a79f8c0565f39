//! Notifications against real HTTP receivers on 127.0.0.1: one answering
//! 500 for a while (and checking the HMAC signature), one hanging past the
//! timeout, one dropping connections, one down at first; pushes, tag moves
//! and deletes meanwhile; ferro SIGKILLed in the middle of deliveries and
//! restarted. At the end every receiver has every matching event at least
//! once, in order, with no gap; duplicates are only of what was accepted
//! before the kill; and the deduplicated stream equals the event feed for
//! the same filter. The distribution-format receivers parse bodies with a
//! small client written against distribution's documented fields.
mod common;
#[path = "support/receiver.rs"]
mod receiver;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use receiver::{signature_ok, Behaviour, Received, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::*;

const SECRET: &str = "s3cret-for-tests";
const DISTRIBUTION_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// Event kinds that have a distribution action.
const ACTION_KINDS: [&str; 6] = [
    "manifest_put",
    "tag_set",
    "tag_deleted",
    "manifest_deleted",
    "blob_linked",
    "blob_unlinked",
];

/// distribution's notification envelope, from its documentation
/// (docs/notifications.md of distribution: "Events"), as a receiver
/// written for distribution would declare it.
mod distribution {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct Envelope {
        pub events: Vec<Event>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Event {
        pub id: String,
        pub timestamp: String,
        pub action: String,
        pub target: Target,
        #[serde(default)]
        pub request: Option<Request>,
        #[serde(default)]
        pub actor: Option<Actor>,
        pub source: Source,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Target {
        #[serde(default)]
        pub media_type: Option<String>,
        #[serde(default)]
        pub size: Option<u64>,
        pub digest: String,
        #[serde(default)]
        pub length: Option<u64>,
        pub repository: String,
        #[serde(default)]
        pub url: Option<String>,
        #[serde(default)]
        pub tag: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Request {
        pub id: String,
        pub addr: String,
        pub host: String,
        pub method: String,
        pub useragent: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct Actor {
        pub name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Source {
        pub addr: String,
        #[serde(rename = "instanceID")]
        pub instance_id: String,
    }
}

/// An event as both sides are compared: its id, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: String,
    seq: u64,
    index: u64,
    what: String,
}

fn parse_id(id: &str) -> (u64, u64) {
    let (s, i) = id.split_once('-').expect("id is <seq>-<index>");
    (s.parse().unwrap(), i.parse().unwrap())
}

/// The events of the bodies a CloudEvents receiver accepted, in order.
fn cloudevents_stream(accepted: &[Received]) -> Vec<Seen> {
    let mut out = Vec::new();
    for r in accepted {
        let ct = r.headers["content-type"].to_str().unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let events = match ct {
            "application/cloudevents-batch+json" => v.as_array().unwrap().clone(),
            "application/cloudevents+json" => vec![v],
            other => panic!("content type {other}"),
        };
        for e in events {
            assert_eq!(e["specversion"], "1.0");
            assert!(e["type"].as_str().unwrap().starts_with("dev.ferro."));
            let id = e["id"].as_str().unwrap().to_owned();
            let (seq, index) = parse_id(&id);
            assert_eq!(e["data"]["seq"], seq);
            out.push(Seen {
                id,
                seq,
                index,
                what: e["data"]["event"].to_string(),
            });
        }
    }
    out
}

/// The events of the bodies a distribution receiver accepted, parsed with
/// the client above.
fn distribution_stream(accepted: &[Received]) -> Vec<Seen> {
    let mut out = Vec::new();
    for r in accepted {
        assert_eq!(r.headers["content-type"], DISTRIBUTION_MEDIA_TYPE);
        let envelope: distribution::Envelope = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
        for e in envelope.events {
            assert!(!e.timestamp.is_empty() && !e.source.addr.is_empty());
            let _ = &e.source.instance_id;
            if e.action == "push" {
                if let Some(t) = &e.target.tag {
                    assert!(!t.is_empty());
                }
                assert!(e.target.url.as_deref().unwrap_or("").contains("/v2/"));
                if e.target.media_type.is_some() {
                    assert_eq!(e.target.size, e.target.length);
                }
            }
            if let Some(req) = &e.request {
                let _ = (&req.id, &req.addr, &req.host, &req.useragent);
                assert!(["PUT", "POST", "DELETE"].contains(&req.method.as_str()));
            }
            let _ = e.actor.as_ref().map(|a| &a.name);
            let (seq, index) = parse_id(&e.id);
            out.push(Seen {
                id: e.id.clone(),
                seq,
                index,
                what: format!(
                    "{} {} {} {}",
                    e.action,
                    e.target.repository,
                    e.target.digest,
                    e.target.tag.unwrap_or_default()
                ),
            });
        }
    }
    out
}

/// What a feed event says, in the distribution receiver's terms.
fn distribution_what(kind: &str, e: &Value) -> String {
    let f = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    let action = match kind {
        "ManifestPut" | "TagSet" => "push".to_owned(),
        "BlobLinked" if e["source"].get("Mount").is_some() => "mount".to_owned(),
        "BlobLinked" => "push".to_owned(),
        _ => "delete".to_owned(),
    };
    let tag = if kind == "TagSet" || kind == "TagDeleted" {
        f("tag")
    } else {
        String::new()
    };
    format!("{action} {} {} {tag}", f("repo"), f("digest"))
}

/// The event feed for a filter, every page: (seq, kind, event JSON).
async fn feed(reg: &Registry, filter: &str) -> Vec<(u64, String, Value)> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let r = reg
            .get(&format!(
                "/v2/_ferro/events/feed?after={after}&n=1000{filter}"
            ))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        for entry in page["entries"].as_array().unwrap() {
            let seq = entry["seq"].as_u64().unwrap();
            for e in entry["events"].as_array().unwrap() {
                let (kind, body) = e.as_object().unwrap().iter().next().unwrap();
                out.push((seq, kind.clone(), body.clone()));
            }
        }
        let next = page["next"].as_u64().unwrap();
        if next >= page["last_seq"].as_u64().unwrap() || next == after {
            return out;
        }
        after = next;
    }
}

/// Removes repeats (keeping the first), and checks that what is left is
/// in strictly increasing log order.
fn dedupe_in_order(name: &str, stream: &[Seen]) -> (Vec<Seen>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut unique: Vec<Seen> = Vec::new();
    let mut repeats = Vec::new();
    for s in stream {
        if !seen.insert(s.id.clone()) {
            repeats.push(s.id.clone());
            continue;
        }
        if let Some(last) = unique.last() {
            assert!(
                (last.seq, last.index) < (s.seq, s.index),
                "{name}: {} after {}: out of order",
                s.id,
                last.id
            );
        }
        unique.push(s.clone());
    }
    (unique, repeats)
}

fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[notifications.endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\n\
         timeout = \"1s\"\nbackoff_min = \"50ms\"\nbackoff_max = \"300ms\"\nfailing_after = \"500ms\"\n\
         batch_max = 7\n{extra}\n"
    )
}

async fn status(reg: &Registry) -> Value {
    let r = reg.get("/v2/_ferro/notifications").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn endpoint_status<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {s}"))
}

/// Waits until every endpoint has acknowledged the whole log.
async fn wait_caught_up(reg: &Registry, names: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(reg).await;
        let last = s["last_seq"].as_u64().unwrap();
        if names
            .iter()
            .all(|n| endpoint_status(&s, n)["durable_cursor"].as_u64() == Some(last))
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints did not catch up: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One round of changes: a new tagged image, a tag move, and (after the
/// first round) the previous image deleted with its tag.
async fn churn(reg: &Registry, round: usize, previous: &mut Option<String>) {
    let image = reg
        .push_image("team/app", &format!("v{round}"), &format!("app-{round}"))
        .await;
    reg.push_image("lib/base", "latest", &format!("base-{round}"))
        .await;
    if let Some(digest) = previous.take() {
        let r = reg
            .delete(&format!("/v2/team/app/manifests/{digest}"))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    *previous = Some(image.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_gets_every_event_in_order_across_a_kill() {
    let flaky = Receiver::start(Behaviour::Fail500(6), Some(SECRET)).await;
    let slow = Receiver::start(Behaviour::Hang(2, Duration::from_secs(3)), None).await;
    let dropper = Receiver::start(Behaviour::Drop(5), None).await;
    // Down at first: its port is reserved, then freed, and bound later.
    let late_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let late_url = format!("http://{late_addr}/hook");

    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("ferro.toml");
    let mut text = String::new();
    text += &endpoint(
        "flaky",
        &flaky.url(),
        &format!("format = \"cloudevents\"\nsecret = \"{SECRET}\"\nstart = \"beginning\""),
    );
    text += &endpoint(
        "slow",
        &slow.url(),
        "format = \"distribution\"\nstart = \"beginning\"",
    );
    text += &endpoint(
        "dropper",
        &dropper.url(),
        "format = \"cloudevents\"\nkinds = [\"manifest_put\", \"tag_set\", \"tag_deleted\", \"manifest_deleted\"]\nstart = \"beginning\"",
    );
    text += &endpoint(
        "late",
        &late_url,
        "format = \"distribution\"\nrepositories = [\"team/**\"]\nstart = \"beginning\"",
    );
    std::fs::write(&config, text).unwrap();
    let mut reg = Registry::start(&["--config", config.to_str().unwrap()]);

    let mut previous = None;
    for round in 0..4 {
        churn(&reg, round, &mut previous).await;
    }
    // Deliveries are under way (the flaky one still failing, the slow one
    // hanging, the late one refused): kill in the middle of them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = status(&reg).await;
    assert!(
        endpoint_status(&s, "late")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{s:#}"
    );
    let mut before_kill: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    reg.restart_with(|_| {
        before_kill.insert("flaky", ids(&cloudevents_stream(&flaky.accepted())));
        before_kill.insert("slow", ids(&distribution_stream(&slow.accepted())));
        before_kill.insert("dropper", ids(&cloudevents_stream(&dropper.accepted())));
    });
    for round in 4..7 {
        churn(&reg, round, &mut previous).await;
    }
    let late = Receiver::start_on(late_addr, Behaviour::Accept, None).await;
    for round in 7..9 {
        churn(&reg, round, &mut previous).await;
    }
    let s = wait_caught_up(&reg, &["flaky", "slow", "dropper", "late"]).await;

    // Every stream, deduplicated, is the feed for the same filter.
    let all = feed(&reg, "").await;
    let check = |name: &str, stream: Vec<Seen>, expected: Vec<(u64, String)>| {
        let (unique, repeats) = dedupe_in_order(name, &stream);
        let got: Vec<(u64, String)> = unique.iter().map(|s| (s.seq, s.what.clone())).collect();
        assert_eq!(got.len(), expected.len(), "{name}: count");
        assert_eq!(got, expected, "{name}: the stream is not the feed");
        if let Some(before) = before_kill.get(name) {
            for r in &repeats {
                assert!(
                    before.contains(r),
                    "{name}: {r} repeated but not in flight at the kill"
                );
            }
        } else {
            assert!(repeats.is_empty(), "{name}: repeats {repeats:?}");
        }
        unique.len()
    };
    let n = check(
        "flaky",
        cloudevents_stream(&flaky.accepted()),
        all.iter()
            .map(|(seq, kind, e)| (*seq, serde_json::json!({ kind: e }).to_string()))
            .collect(),
    );
    assert!(n > 50, "{n} events");
    let action_filter: String = ACTION_KINDS.iter().map(|k| format!("&kind={k}")).collect();
    let expected_dist = |events: Vec<(u64, String, Value)>| {
        events
            .into_iter()
            .map(|(seq, kind, e)| (seq, distribution_what(&kind, &e)))
            .collect::<Vec<_>>()
    };
    check(
        "slow",
        distribution_stream(&slow.accepted()),
        expected_dist(feed(&reg, &action_filter).await),
    );
    let kinds = "&kind=manifest_put&kind=tag_set&kind=tag_deleted&kind=manifest_deleted";
    check(
        "dropper",
        cloudevents_stream(&dropper.accepted()),
        feed(&reg, kinds)
            .await
            .into_iter()
            .map(|(seq, kind, e)| (seq, serde_json::json!({ kind: e }).to_string()))
            .collect(),
    );
    check(
        "late",
        distribution_stream(&late.accepted()),
        expected_dist(feed(&reg, &format!("{action_filter}&repo=team/app")).await),
    );

    // Every accepted body was signed, and the check would catch a forgery.
    assert_eq!(flaky.bad_signatures(), 0);
    let signed = &flaky.accepted()[0];
    assert!(signature_ok(SECRET, &signed.headers, &signed.body));
    let mut forged = signed.body.to_vec();
    forged[0] ^= 1;
    assert!(!signature_ok(SECRET, &signed.headers, &forged));
    assert!(!signature_ok("other", &signed.headers, &signed.body));
    assert!(!slow.accepted()[0].headers.contains_key("ferro-signature"));

    // The failures were seen and counted, the failing state recovered.
    for name in ["flaky", "slow", "dropper"] {
        let e = endpoint_status(&s, name);
        assert_eq!(e["lag_entries"], 0, "{e}");
        assert_eq!(e["failing"], false, "{e}");
    }
    assert!(flaky.requests() > flaky.accepted().len());
    let metrics = reg.get("/metrics").await.text().await.unwrap();
    let sample = |name: &str, endpoint: &str| {
        common::metrics_sample(&metrics, name, &[&format!("endpoint=\"{endpoint}\"")])
    };
    assert!(sample("ferro_notifications_deliveries_total", "late").unwrap() > 0.0);
    assert_eq!(sample("ferro_notifications_lag_entries", "late"), Some(0.0));
    assert_eq!(sample("ferro_notifications_failing", "late"), Some(0.0));
    // Counted since the restart: the drops all happened before it, the
    // 500s may have; the late endpoint was refused after it.
    assert!(sample("ferro_notifications_failures_total", "late").unwrap_or(0.0) > 0.0);
}

fn ids(stream: &[Seen]) -> HashSet<String> {
    stream.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_and_skips_on_the_record() {
    let hook = Receiver::start(Behaviour::Accept, None).await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        endpoint(
            "ci",
            &hook.url(),
            "format = \"cloudevents\"\nstart = \"end\"",
        ),
    )
    .unwrap();
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    reg.push_image("team/app", "v1", "one").await;
    let s = wait_caught_up(&reg, &["ci"]).await;
    let last = s["last_seq"].as_u64().unwrap();
    let first_pass = cloudevents_stream(&hook.accepted());
    assert!(!first_pass.is_empty());

    // Replay from the first entry: everything again, then the move itself.
    let r = reg
        .request(
            Method::POST,
            "/v2/_ferro/notifications?endpoint=ci&replay_from=1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let moved: Value = r.json().await.unwrap();
    assert_eq!(moved["from_seq"], last);
    assert_eq!(moved["to_seq"], 0);
    wait_caught_up(&reg, &["ci"]).await;
    let stream = cloudevents_stream(&hook.accepted());
    let replayed = &stream[first_pass.len()..];
    assert_eq!(replayed[0].seq, 1, "replayed from the start");
    let last_event = replayed.last().unwrap();
    assert!(
        last_event.what.contains("NotificationCursorMoved"),
        "{last_event:?}"
    );
    let on_record = feed(&reg, "&kind=notification_cursor_moved").await;
    assert_eq!(on_record.len(), 1);
    assert_eq!(on_record[0].2["endpoint"], "ci");

    // Skip to the end: nothing of the past is sent again.
    let before = hook.accepted().len();
    let r = reg
        .request(Method::POST, "/v2/_ferro/notifications?endpoint=ci&to=end")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    wait_caught_up(&reg, &["ci"]).await;
    let after: Vec<Seen> = cloudevents_stream(&hook.accepted()[before..]);
    assert!(
        after
            .iter()
            .all(|s| s.what.contains("NotificationCursorMoved")),
        "{after:?}"
    );

    // Bad requests are refused with the spec's error body.
    for (q, status) in [
        ("endpoint=nope&to=end", 404),
        ("endpoint=ci", 400),
        ("endpoint=ci&replay_from=zero", 400),
        ("endpoint=ci&replay_from=999999", 400),
    ] {
        let r = reg
            .request(Method::POST, &format!("/v2/_ferro/notifications?{q}"))
            .send()
            .await
            .unwrap();
        expect_error(r, status, "UNSUPPORTED").await;
    }
    let r = reg.delete("/v2/_ferro/notifications").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// A configuration with one endpoint `down` at a free port nobody listens
/// on (yet), small segments and a snapshot (and compaction) every few
/// records, history kept for 1 s.
fn compacting_config(
    dir: &std::path::Path,
    extra: &str,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.join("ferro.toml");
    std::fs::write(
        &path,
        format!(
            "[limits]\nsegment_bytes_max = 4096\n[snapshots]\nevery_records = 6\n\
             [history]\nretention = \"1s\"\n[notifications]\n{extra}\n{}",
            endpoint(
                "down",
                &format!("http://{addr}/hook"),
                "format = \"cloudevents\"\nstart = \"beginning\"",
            )
        ),
    )
    .unwrap();
    (path, addr)
}

fn first_log_segment(reg: &Registry) -> u64 {
    let mut names: Vec<u64> = std::fs::read_dir(reg.dir.path().join("log"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    names.sort();
    names[0]
}

async fn push_many(reg: &Registry, from: usize, to: usize) {
    for i in from..to {
        reg.push_image(
            "team/app",
            "latest",
            &format!("image-{i}-{}", "x".repeat(300)),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_failing_holds_compaction_and_slows_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = Receiver::start(Behaviour::Accept, None).await;
    let (config, addr) = compacting_config(
        dir.path(),
        &endpoint("healthy", &healthy.url(), "format = \"cloudevents\""),
    );
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    let started = Instant::now();
    push_many(&reg, 0, 15).await;
    let push_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    push_many(&reg, 15, 20).await;

    let s = status(&reg).await;
    let e = endpoint_status(&s, "down");
    assert_eq!(e["failing"], true, "{e}");
    assert!(e["failing_since"].is_string(), "{e}");
    assert!(e["lag_entries"].as_u64().unwrap() >= 60, "{e}");
    assert!(e["lag_seconds"].as_f64().unwrap() >= 1.0, "{e}");
    assert_eq!(e["durable_cursor"], 0);
    // The other endpoint is not held up by it.
    let healthy_caught_up = Instant::now();
    wait_caught_up(&reg, &["healthy"]).await;
    assert!(healthy_caught_up.elapsed() < Duration::from_secs(5));
    let metrics = reg.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        common::metrics_sample(
            &metrics,
            "ferro_notifications_failing",
            &["endpoint=\"down\""]
        ),
        Some(1.0)
    );
    // Writes went on at their pace: 45 records in far less than the
    // endpoint's timeouts and backoffs would take if they waited on it.
    assert!(push_time < Duration::from_secs(10), "{push_time:?}");
    // Compaction ran (snapshots are there) but kept every entry.
    assert!(
        std::fs::read_dir(reg.dir.path().join("snapshots"))
            .unwrap()
            .count()
            > 0
    );
    assert_eq!(
        first_log_segment(&reg),
        1,
        "entries the endpoint has not acknowledged left the log"
    );

    // The endpoint comes up: it gets everything from the first entry, and
    // compaction may then take what it acknowledged.
    let hook = Receiver::start_on(addr, Behaviour::Accept, None).await;
    let s = wait_caught_up(&reg, &["down"]).await;
    assert_eq!(endpoint_status(&s, "down")["failing"], false);
    let stream = cloudevents_stream(&hook.accepted());
    assert_eq!(stream[0].seq, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    push_many(&reg, 20, 26).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_log_segment(&reg) == 1 {
        assert!(
            Instant::now() < deadline,
            "compaction never ran once acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        push_many(&reg, 26, 27).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retention_first_a_late_endpoint_is_told_of_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = compacting_config(dir.path(), "hold = \"retention\"");
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    push_many(&reg, 0, 15).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    push_many(&reg, 15, 20).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_log_segment(&reg) == 1 {
        assert!(Instant::now() < deadline, "compaction did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
        push_many(&reg, 20, 21).await;
    }
    let log_first = first_log_segment(&reg);
    let hook = Receiver::start_on(addr, Behaviour::Accept, None).await;
    wait_caught_up(&reg, &["down"]).await;
    // A batch read before compaction may still arrive first; then the gap
    // event; then the entries still in the log, in order, none missing.
    let events: Vec<Value> = hook
        .accepted()
        .iter()
        .flat_map(|r| match serde_json::from_slice(&r.body).unwrap() {
            Value::Array(events) => events,
            single => vec![single],
        })
        .collect();
    let at = events
        .iter()
        .position(|e| e["type"] == "dev.ferro.notifications.gap")
        .unwrap_or_else(|| panic!("no gap event in {events:#?}"));
    let gap = &events[at]["data"];
    let seq = |e: &Value| e["data"]["seq"].as_u64().unwrap();
    let before_gap = events[..at].last().map_or(0, seq);
    assert_eq!(gap["from_seq"].as_u64().unwrap(), before_gap + 1, "{gap}");
    let to_seq = gap["to_seq"].as_u64().unwrap();
    assert!(to_seq + 1 >= log_first, "{gap}");
    assert_eq!(seq(&events[at + 1]), to_seq + 1);
    let last_seq = status(&reg).await["last_seq"].as_u64().unwrap();
    let mut expected = to_seq + 1;
    for e in &events[at + 1..] {
        // Every entry, each event once: the same entry or the next one.
        assert!(
            seq(e) == expected || seq(e) == expected + 1,
            "{e} after {expected}"
        );
        expected = seq(e);
    }
    assert_eq!(expected, last_seq);
}

/// A CA, and a certificate for localhost it signed: (CA PEM, acceptor).
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "notification test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let acceptor = ferro::tls::acceptor(&ferro::config::TlsConfig {
        cert: cert_path,
        key: key_path,
    })
    .unwrap()
    .unwrap();
    (ca_path, acceptor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, acceptor) = certificates(dir.path());
    let hook = Receiver::start_tls(acceptor.clone()).await;
    let stranger = Receiver::start_tls(acceptor).await;
    let url = |r: &Receiver| format!("https://localhost:{}/hook", r.addr.port());
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            endpoint(
                "trusted",
                &url(&hook),
                &format!("format = \"cloudevents\"\nca = \"{}\"", ca.display())
            ),
            // Checked against the system's roots, which do not know the CA.
            endpoint("untrusted", &url(&stranger), "format = \"cloudevents\""),
        ),
    )
    .unwrap();
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    reg.push_image("team/app", "v1", "tls").await;
    let s = wait_caught_up(&reg, &["trusted"]).await;
    let events = cloudevents_stream(&hook.accepted());
    assert_eq!(events.len(), feed(&reg, "").await.len());
    let untrusted = endpoint_status(&s, "untrusted");
    assert_eq!(untrusted["durable_cursor"], 0, "{untrusted}");
    assert!(stranger.accepted().is_empty());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&reg).await;
        let error = endpoint_status(&s, "untrusted")["last_error"].clone();
        if let Some(e) = error.as_str() {
            assert!(e.contains("TLS") || e.contains("CA"), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error for the untrusted endpoint: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_an_endpoint_in_few_large_batches() {
    let hook = Receiver::start(Behaviour::Accept, None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            "[[notifications.endpoints]]\nname = \"burst\"\nurl = \"{}\"\n\
             format = \"cloudevents\"\nbatch_max = 1000\nbatch_window = \"5s\"\n",
            hook.url()
        ),
    )
    .unwrap();
    let reg = Registry::start(&["--config", config.to_str().unwrap()]);
    // After a quiet spell an entry goes at once, not after the window.
    let started = Instant::now();
    reg.push_image("team/app", "first", "first").await;
    while hook.accepted().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the first entry waited for the window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_requests = hook.accepted().len();
    // A burst right after it gathers for the window: dozens of entries,
    // one or two requests (two when the burst straddles a window's end).
    for i in 0..10 {
        reg.push_image("team/app", &format!("t{i}"), &format!("burst-{i}"))
            .await;
    }
    let s = wait_caught_up(&reg, &["burst"]).await;
    let last = s["last_seq"].as_u64().unwrap();
    let accepted = hook.accepted();
    let stream = cloudevents_stream(&accepted);
    let (deduped, _) = dedupe_in_order("burst", &stream);
    assert_eq!(deduped.last().map(|e| e.seq), Some(last));
    assert!(last >= 30, "{last} entries");
    let burst_requests = accepted.len() - first_requests;
    assert!(
        (1..=2).contains(&burst_requests),
        "{burst_requests} requests for {last} entries"
    );
}
