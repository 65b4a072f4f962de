//! Phraseanet events: from the bytes Phraseanet POSTs to one typed value.
//!
//! Two formats exist (see README, "Events"): the documented one (`name`, `mail`,
//! `feed.is_public`) and the current one (Phraseanet 4.1.5 and later: `event`,
//! `email`, ids, and an envelope with `webhookId`, `url`, `instance_name`,
//! `event_time`). Both parse into one [`Event`]; the fields only one format has are
//! `Option`s. The original bytes are kept untouched: they are what a client without
//! a plugin receives and what plugins read as `json`.
//!
//! Only `new_feed_entry` has a typed view so far; every other event is accepted
//! with its envelope checked and reaches plugins as `other`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// Every event name Phraseanet 4.1 sends.
pub const KNOWN_EVENTS: &[&str] = &[
    "new_feed_entry",
    "record.created",
    "record.edited",
    "record.deleted",
    "record.media_substituted",
    "record.collection_changed",
    "record.status_changed",
    "record.subdef.created",
    "record.subdef.creation_failed",
    "user.created",
    "user.deleted",
    "user.registration.granted",
    "user.registration.rejected",
    "order.created",
    "order.delivered",
    "order.denied",
];

/// One event as the host stores it and hands it to plugins.
#[derive(Debug, Clone)]
pub struct Event {
    /// The host's id (`evt_…`), answered to the sender.
    pub id: String,
    /// The event's name (`new_feed_entry`, `record.created`, …).
    pub name: String,
    /// The body exactly as received.
    pub raw: Bytes,
    pub payload: Payload,
    pub source: Option<Source>,
}

/// The typed view of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    NewFeedEntry(Box<NewFeedEntry>),
    Other,
}

/// The envelope of the current format.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub webhook_id: i64,
    pub url: String,
    pub instance_name: String,
    pub time: Option<EventTime>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventTime {
    #[serde(rename = "date")]
    pub local: String,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NewFeedEntry {
    pub feed: Feed,
    pub entry: Entry,
    #[serde(default, deserialize_with = "php_list")]
    pub users: Vec<Subscriber>,
    #[serde(default)]
    pub users_were_notified: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Feed {
    pub id: Option<i64>,
    pub title: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub description: String,
    pub is_public: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    pub id: Option<i64>,
    pub author: Author,
    pub title: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Author {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Subscriber {
    /// `email` in the current format, `mail` in the documented one.
    #[serde(alias = "mail")]
    pub email: String,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
}

/// Why a body is not an event. The message goes back to the sender in a 400.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "the body is the JSON value null; Phraseanet sends that when an event has nothing to report \
         (a deleted feed entry, say), and there is nothing to deliver"
    )]
    Null,
    #[error("the body is a JSON {0}, not an object")]
    NotObject(&'static str),
    #[error(
        "the body names no event: it needs a string `event` (current format) or `name` (documented format)"
    )]
    NoName,
    #[error("`{field}` {problem}")]
    Field { field: String, problem: String },
}

impl Event {
    /// Parses `raw` as a Phraseanet event, in either format, under the id `id`.
    pub fn parse(id: String, raw: Bytes) -> Result<Event, EventError> {
        let value: Value =
            serde_json::from_slice(&raw).map_err(|e| EventError::NotJson(e.to_string()))?;
        let obj = match &value {
            Value::Object(o) => o,
            Value::Null => return Err(EventError::Null),
            Value::Array(_) => return Err(EventError::NotObject("array")),
            Value::String(_) => return Err(EventError::NotObject("string")),
            Value::Number(_) => return Err(EventError::NotObject("number")),
            Value::Bool(_) => return Err(EventError::NotObject("boolean")),
        };
        let name = match (obj.get("event"), obj.get("name")) {
            (Some(Value::String(s)), _) | (None, Some(Value::String(s))) if !s.is_empty() => {
                s.clone()
            }
            (Some(v), _) if !v.is_string() => return Err(field("event", "must be a string", v)),
            (None, Some(v)) if !v.is_string() => return Err(field("name", "must be a string", v)),
            _ => return Err(EventError::NoName),
        };
        let source = parse_source(obj)?;
        let payload = match name.as_str() {
            "new_feed_entry" => Payload::NewFeedEntry(Box::new(typed(&value)?)),
            _ => Payload::Other,
        };
        Ok(Event {
            id,
            name,
            raw,
            payload,
            source,
        })
    }
}

/// A fresh, time-ordered event id.
pub fn new_event_id() -> String {
    format!("evt_{}", ulid::Ulid::new().to_string().to_lowercase())
}

fn field(name: &str, problem: &str, got: &Value) -> EventError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    EventError::Field {
        field: name.to_string(),
        problem: format!("{problem}, not {kind}"),
    }
}

/// The envelope is all or nothing: `webhookId` marks the current format, and then
/// `url` and `instance_name` must be there too.
fn parse_source(obj: &serde_json::Map<String, Value>) -> Result<Option<Source>, EventError> {
    let Some(id) = obj.get("webhookId") else {
        return Ok(None);
    };
    let webhook_id = id
        .as_i64()
        .ok_or_else(|| field("webhookId", "must be an integer", id))?;
    let text = |key: &str| -> Result<String, EventError> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(field(key, "must be a string", v)),
            None => Err(EventError::Field {
                field: key.to_string(),
                problem: "is missing (an event with `webhookId` carries the whole envelope)".into(),
            }),
        }
    };
    let time = match obj.get("event_time") {
        None | Some(Value::Null) => None,
        Some(v) => Some(EventTime::deserialize(v).map_err(|e| EventError::Field {
            field: "event_time".into(),
            problem: format!("must be {{\"date\": …, \"timezone\": …}} ({e})"),
        })?),
    };
    Ok(Some(Source {
        webhook_id,
        url: text("url")?,
        instance_name: text("instance_name")?,
        time,
    }))
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        EventError::Field {
            field: path,
            problem: e.into_inner().to_string(),
        }
    })
}

/// PHP's `json_encode` writes an empty array as `[]` but a list with holes as a map;
/// accept both, and `null`.
fn php_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L<T> {
        List(Vec<T>),
        Map(std::collections::BTreeMap<String, T>),
        Null(()),
    }
    Ok(match L::deserialize(d)? {
        L::List(v) => v,
        L::Map(m) => m.into_values().collect(),
        L::Null(()) => Vec::new(),
    })
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, EventError> {
        Event::parse("evt_test".into(), Bytes::copy_from_slice(s.as_bytes()))
    }

    const CURRENT: &str = include_str!("../../tests/fixtures/events/new_feed_entry.json");
    const DOCUMENTED: &str =
        include_str!("../../tests/fixtures/events/new_feed_entry.documented.json");

    #[test]
    fn both_formats_give_one_typed_view() {
        let cur = parse(CURRENT).unwrap();
        let doc = parse(DOCUMENTED).unwrap();
        assert_eq!(cur.name, "new_feed_entry");
        assert_eq!(doc.name, "new_feed_entry");
        let (Payload::NewFeedEntry(c), Payload::NewFeedEntry(d)) = (&cur.payload, &doc.payload)
        else {
            panic!("not typed")
        };
        assert_eq!(c.feed.title, d.feed.title);
        assert_eq!(c.feed.id, Some(4));
        assert_eq!(d.feed.id, None);
        assert_eq!(d.feed.is_public, Some(false));
        assert_eq!(c.feed.is_public, None);
        assert_eq!(c.users[0].email, "bradley72@yahoo.com");
        assert_eq!(d.users[0].email, "bradley72@yahoo.com");
        assert_eq!(c.users[1].lastname, None);
        assert!(
            c.entry
                .description
                .ends_with("Palme d\u{2019}or: \u{c9}lise")
        );
        let s = cur.source.unwrap();
        assert_eq!(
            (s.webhook_id, s.instance_name.as_str()),
            (12, "Festival DAM")
        );
        assert_eq!(s.time.unwrap().timezone, "Europe/Paris");
        assert!(doc.source.is_none());
        assert_eq!(&cur.raw[..], CURRENT.as_bytes());
    }

    #[test]
    fn every_phraseanet_event_is_accepted() {
        for name in KNOWN_EVENTS {
            let body = format!(
                r#"{{"event":"{name}","webhookId":1,"version":1,"url":"https:\/\/d\/","instance_name":"D","data":{{}}}}"#
            );
            if *name == "new_feed_entry" {
                continue;
            }
            let e = parse(&body).unwrap();
            assert_eq!(e.payload, Payload::Other, "{name}");
        }
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert!(msg("null").contains("null"));
        assert!(msg("[1]").contains("array"));
        assert!(msg("\"x\"").contains("string"));
        assert!(msg("{").contains("not JSON"));
        assert!(msg("{}").contains("names no event"));
        assert!(msg(r#"{"event": 3}"#).contains("`event` must be a string, not a number"));
        assert!(
            msg(r#"{"event":"x","webhookId":"12"}"#).contains("`webhookId` must be an integer")
        );
        assert!(msg(r#"{"event":"x","webhookId":12}"#).contains("`url` is missing"));
        let m = msg(r#"{"name":"new_feed_entry","feed":{"title":3},"entry":{}}"#);
        assert!(m.starts_with("`feed.title`"), "{m}");
        let m = msg(r#"{"name":"new_feed_entry","feed":{"title":"t"}}"#);
        assert!(m.contains("entry"), "{m}");
        let m = msg(
            r#"{"name":"new_feed_entry","feed":{"title":"t"},"entry":{"title":"e","author":{}},"users":[{"email":1}]}"#,
        );
        assert!(m.starts_with("`users"), "{m}");
    }
}
