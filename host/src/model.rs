//! The types every stage of an event's path shares: ids, the clock, a delivery's
//! state, a job as the workers handle it, a rendering, an attempt, a change to a
//! delivery. Plain data, no behaviour beyond naming; nothing here knows SQLite,
//! HTTP or wasmtime.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::Event;

/// A fresh, time-ordered event id (`evt_…`).
pub fn new_event_id() -> String {
    new_id("evt_")
}

/// `prefix` and a new ULID in lower case, in one allocation (two are made per
/// event, on its hottest path).
fn new_id(prefix: &str) -> String {
    let mut ulid = [0u8; ulid::ULID_LEN];
    let ulid = ulid::Ulid::new().array_to_str(&mut ulid);
    ulid.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + ulid.len());
    id.push_str(prefix);
    id.push_str(ulid);
    id
}

/// A request body and headers as a plugin rendered them (or the event's own
/// bytes, for a client without a plugin).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Held,
    PluginError,
    Retrying,
    Delivered,
    Skipped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Held => "held",
            State::PluginError => "plugin_error",
            State::Retrying => "retrying",
            State::Delivered => "delivered",
            State::Skipped => "skipped",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "held" => State::Held,
            "plugin_error" => State::PluginError,
            "retrying" => State::Retrying,
            "delivered" => State::Delivered,
            "skipped" => State::Skipped,
            "failed" => State::Failed,
            _ => return None,
        })
    }
}

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time as people and tools write it, in ms since the Unix epoch: RFC 3339
/// (`2026-05-24T21:00:00Z`), milliseconds, or a duration meaning that long ago
/// (`2h`). `None` for anything else. The API's `since`/`until` and the command
/// line's `--since` read times this one way.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        );
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let ago = humantime::parse_duration(s).ok()?;
    Some(now_ms() - ago.as_millis() as i64)
}

/// A delivery to create with an event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `msg_…`: the `webhook-id` the client sees on every attempt.
    pub id: String,
    pub client_id: String,
}

/// A fresh, time-ordered delivery id.
pub fn new_delivery_id() -> String {
    new_id("msg_")
}

/// A delivery as the workers handle it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Commit order; per client, first attempts follow it.
    pub seq: i64,
    pub id: String,
    pub client_id: String,
    pub event: Arc<Event>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The stored rendering, once the plugin ran (or the event went out as is).
    pub rendered: Option<StoredRender>,
}

impl Job {
    /// `delivery` of `event` just stored as `seq`, handed to its worker
    /// straight from the ingest: no attempt yet, nothing rendered.
    pub fn fresh(seq: i64, delivery: NewDelivery, event: &Arc<Event>) -> Job {
        Job {
            seq,
            id: delivery.id,
            client_id: delivery.client_id,
            event: event.clone(),
            attempts: 0,
            rendered: None,
        }
    }
}

/// What was rendered for a delivery and by which plugin version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRender {
    pub request: Rendered,
    /// `file@hash` of the plugin, `None` for a client without a plugin.
    pub plugin: Option<String>,
}

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    /// `timeout`, `connect`, `blocked`, `status`, … (`None` on success).
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first few KiB of the answer's body.
    pub response: Option<String>,
}

/// A change to one delivery.
#[derive(Debug, Clone)]
pub struct Update {
    pub seq: i64,
    pub state: State,
    pub reason: Option<String>,
    /// Set once, when the delivery is first rendered.
    pub render: Option<StoredRender>,
    pub attempt: Option<Attempt>,
    pub next_attempt_at: Option<i64>,
    /// `file@hash` of the plugin involved, for held and plugin_error rows.
    pub plugin: Option<String>,
    /// `render`'s body is the event's own bytes (stored once, with the event).
    pub render_is_event_body: bool,
}

impl Update {
    pub fn new(seq: i64, state: State) -> Update {
        Update {
            seq,
            state,
            reason: None,
            render: None,
            attempt: None,
            next_attempt_at: None,
            plugin: None,
            render_is_event_body: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are the prefix and a ULID in lower case: 30 characters, and ordered
    /// by time as text (the store's id indexes grow at their right edge).
    #[test]
    fn ids_are_prefixed_lower_case_ulids_in_time_order() {
        let (first, event) = (new_delivery_id(), new_event_id());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_delivery_id();
        for (id, prefix) in [(&first, "msg_"), (&event, "evt_"), (&later, "msg_")] {
            assert_eq!(id.len(), 30, "{id}");
            assert!(id.starts_with(prefix), "{id}");
            let ulid = &id[4..];
            assert!(ulid::Ulid::from_string(ulid).is_ok(), "{id}");
            assert_eq!(ulid, ulid.to_ascii_lowercase(), "{id}");
        }
        assert!(first < later, "{first} then {later}");
    }
}
