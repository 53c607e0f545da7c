//! The long-polling transport, sans-io: how a degraded client's frames become REST requests and
//! the server's answers become frames again, so that [`SyncClient`] runs unchanged over HTTP.
//!
//! | frame | request | answer → frame |
//! | --- | --- | --- |
//! | `push` | `POST /api/reconciliation/reconcile` (`requestId` = the batch id, so a retried batch replays) | `push_result` |
//! | `pull` | `GET /api/reconciliation/delta?since&limit&clientId` | `delta` (the body is the frame) |
//! | `subscribe` | `GET /api/events/poll?lastEventId&wait&types`, repeated | one `event` per event |
//! | anything else | — (realtime only) | — |
//!
//! [`SyncClient`]: crate::client::SyncClient

use crate::error::Error;
use crate::ids::{ClientId, TenantId};
use crate::protocol::http::DocumentVersion;
use crate::protocol::{ClientFrame, EventPage, ReconcileRequest, ReconcileResponse, ServerFrame};
use serde::Deserialize;
use serde_json::Value;

/// An HTTP request for the shell to make (with `Authorization: Bearer <token>`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: &'static str,
    /// Path and query, to join to the server's base URL.
    pub path: String,
    pub body: Option<Value>,
    /// What the answer becomes: pass it to [`answer`].
    pub expects: Expect,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    PushResult { batch_id: String },
    Delta,
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The request that carries `frame` over HTTP, or `None` for frames that only exist on a socket
/// (ping, presence, rooms, …) and for `subscribe`, which is [`poll_request`]'s loop.
pub fn request(frame: &ClientFrame, tenant: &TenantId, client: &ClientId) -> Option<HttpRequest> {
    match frame {
        ClientFrame::Push { batch_id, operations } => Some(HttpRequest {
            method: "POST",
            path: "/api/reconciliation/reconcile".into(),
            body: Some(
                serde_json::to_value(ReconcileRequest {
                    request_id: batch_id.clone(),
                    client_id: client.to_string(),
                    tenant_id: Some(tenant.to_string()),
                    last_known_version: None,
                    operations: operations.clone(),
                    requested_at: None,
                    channels: None,
                    held: None,
                })
                .expect("requests serialize"),
            ),
            expects: Expect::PushResult { batch_id: batch_id.clone() },
        }),
        ClientFrame::Pull { since, limit, channels, held } => {
            let mut query = format!("since={since}");
            if let Some(l) = limit {
                query.push_str(&format!("&limit={l}"));
            }
            query.push_str(&format!("&clientId={}", encode(client.as_str())));
            // Channel lists travel as JSON arrays: a channel name may hold any character.
            for (name, list) in [("channels", channels), ("held", held)] {
                if let Some(list) = list {
                    let json = serde_json::to_string(list).expect("strings serialize");
                    query.push_str(&format!("&{name}={}", encode(&json)));
                }
            }
            Some(HttpRequest {
                method: "GET",
                path: format!("/api/reconciliation/delta?{query}"),
                body: None,
                expects: Expect::Delta,
            })
        }
        _ => None,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// The frame a successful (2xx) answer to `expects` stands for.
pub fn answer(expects: &Expect, body: &[u8]) -> Result<ServerFrame, Error> {
    match expects {
        Expect::PushResult { batch_id } => {
            let a: ReconcileResponse = decode("reconcile answer", body)?;
            let version = a.current_version.clone();
            a.into_push_result(batch_id.clone())
                .ok_or_else(|| Error::Decode(format!("currentVersion {version:?}")))
        }
        Expect::Delta => match decode::<ServerFrame>("delta answer", body)? {
            f @ ServerFrame::Delta { .. } => Ok(f),
            _ => Err(Error::Decode("delta answer: not a delta".into())),
        },
    }
}

/// What one long-poll follows: the events after a position matching patterns, and documents at
/// the versions the client has (the poll ends when either moves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollFor<'a> {
    /// `Some((after, patterns))`: events after `after` (the beginning when `None`).
    pub events: Option<(Option<u64>, &'a [String])>,
    pub documents: &'a [DocumentVersion],
    /// The client (with `documents`: its own changes do not end the poll).
    pub client: Option<&'a str>,
}

/// One long-poll for `what`, waiting up to `wait_s` seconds.
pub fn poll_request(what: &PollFor<'_>, wait_s: u32) -> String {
    let mut path = format!("/api/events/poll?limit=500&wait={wait_s}");
    if let Some((after, patterns)) = what.events {
        path.push_str(&format!("&lastEventId={}", after.unwrap_or(0)));
        if !patterns.is_empty() {
            path.push_str("&types=");
            path.push_str(&encode(&patterns.join(",")));
        }
    }
    if !what.documents.is_empty() {
        let docs: Vec<String> =
            what.documents.iter().map(|d| format!("{}@{}", d.document_id, d.version)).collect();
        path.push_str("&documents=");
        path.push_str(&encode(&docs.join(",")));
        if let Some(c) = what.client {
            path.push_str("&clientId=");
            path.push_str(&encode(c));
        }
    }
    path
}

/// A poll's answer: its events as frames, where the next poll resumes, and the watched
/// documents that changed.
pub fn poll_answer(body: &[u8]) -> Result<(Vec<ServerFrame>, u64, Vec<DocumentVersion>), Error> {
    let a: EventPage = decode("poll answer", body)?;
    let next = a
        .next_event_id
        .parse()
        .map_err(|_| Error::Decode(format!("nextEventId {:?}", a.next_event_id)))?;
    let frames = a.events.into_iter().map(|event| ServerFrame::Event { event }).collect();
    Ok((frames, next, a.documents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> (TenantId, ClientId) {
        (TenantId::new("acme").unwrap(), ClientId::new("tab-1").unwrap())
    }

    #[test]
    fn a_push_becomes_an_idempotent_reconcile_and_its_answer_a_push_result() {
        let (t, c) = ids();
        let frame = ClientFrame::Push { batch_id: "b-7".into(), operations: vec![] };
        let r = request(&frame, &t, &c).unwrap();
        assert_eq!((r.method, r.path.as_str()), ("POST", "/api/reconciliation/reconcile"));
        assert_eq!(r.body.as_ref().unwrap()["requestId"], "b-7");
        let body = json!({
            "requestId": "b-7", "conflicts": [], "currentVersion": "42", "completedAt": "x",
            "resolvedOperations": [{"operationId": "o1", "clientSeq": 1, "status": "applied", "duplicate": false, "version": 42}],
        });
        let ServerFrame::PushResult { batch_id, results, current_version, conflicts } =
            answer(&r.expects, body.to_string().as_bytes()).unwrap()
        else {
            panic!("not a push result")
        };
        assert_eq!(
            (batch_id.as_str(), results.len(), current_version, conflicts.len()),
            ("b-7", 1, 42, 0)
        );
    }

    #[test]
    fn a_pull_becomes_a_delta_request_whose_body_is_the_frame() {
        let (t, c) = ids();
        let r = request(
            &ClientFrame::Pull { since: 5, limit: Some(100), channels: None, held: None },
            &t,
            &c,
        )
        .unwrap();
        assert_eq!(
            r.path,
            format!("/api/reconciliation/delta?since=5&limit=100&clientId={}", c.as_str())
        );
        let body =
            json!({"type": "delta", "since": 5, "version": 6, "entities": [], "hasMore": false});
        assert!(matches!(
            answer(&Expect::Delta, body.to_string().as_bytes()),
            Ok(ServerFrame::Delta { version: 6, .. })
        ));
        assert!(answer(&Expect::Delta, br#"{"type":"poke","version":1}"#).is_err());
    }

    #[test]
    fn realtime_frames_have_no_http_form() {
        let (t, c) = ids();
        assert!(request(&ClientFrame::Ping { nonce: 1 }, &t, &c).is_none());
        assert!(
            request(
                &ClientFrame::Subscribe {
                    after: None,
                    event_types: vec![],
                    attributes: Default::default()
                },
                &t,
                &c
            )
            .is_none()
        );
    }

    #[test]
    fn polls_resume_where_the_last_answer_ended() {
        let patterns = ["order.*".to_string(), "todo.created".to_string()];
        let events = PollFor { events: Some((Some(9), &patterns)), ..PollFor::default() };
        assert_eq!(
            poll_request(&events, 25),
            "/api/events/poll?limit=500&wait=25&lastEventId=9&types=order.*%2Ctodo.created"
        );
        let notes = [DocumentVersion { document_id: "notes".into(), version: 17 }];
        let documents = PollFor { events: None, documents: &notes, client: Some("tab-1") };
        assert_eq!(
            poll_request(&documents, 25),
            "/api/events/poll?limit=500&wait=25&documents=notes%4017&clientId=tab-1"
        );
        let body = json!({"events": [{"sequence": 10, "eventId": "e", "eventType": "order.paid", "tenantId": "acme",
            "timestamp": "2026-11-23T10:00:00Z", "payload": {}, "metadata": {}, "schemaVersion": "1.0"}],
            "hasMore": false, "nextEventId": "12"});
        let (frames, next, docs) = poll_answer(body.to_string().as_bytes()).unwrap();
        assert_eq!((frames.len(), next, docs.len()), (1, 12, 0));
    }

    proptest::proptest! {
        /// Answers are outside bytes: anything decodes to a frame or an error, never a panic.
        #[test]
        fn arbitrary_answers_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = answer(&Expect::Delta, &body);
            let _ = answer(&Expect::PushResult { batch_id: "b".into() }, &body);
            let _ = poll_answer(&body);
        }
    }
}
