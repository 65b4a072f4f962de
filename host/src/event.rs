//! Phraseanet events: from the bytes Phraseanet POSTs to one typed value.
//!
//! Two formats exist (see README, "Events"): the documented one (`name`, `mail`,
//! `feed.is_public`) and the current one (Phraseanet 4.1.5 and later: `event`,
//! `email`, ids, and an envelope with `webhookId`, `url`, `instance_name`,
//! `event_time`). Both parse into one [`Event`]; the fields only one format has are
//! `Option`s. The original bytes are kept untouched: they are what a client without
//! a plugin receives and what plugins read as `json`.
//!
//! Every event Phraseanet 4.1 sends has a typed view ([`Payload`]); an event of
//! another name is accepted with its envelope checked and reaches plugins as
//! `other`, with its JSON. A body that is not UTF-8 anywhere is refused.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

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
    /// When the host accepted it, in ms since the Unix epoch.
    pub received_at: i64,
}

/// The typed view of an event: one variant per Phraseanet 4.1 event.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    NewFeedEntry(Box<NewFeedEntry>),
    RecordCreated(Box<RecordCreated>),
    RecordEdited(Box<RecordEdited>),
    RecordDeleted(Box<Asset>),
    RecordMediaSubstituted(Box<Asset>),
    RecordCollectionChanged(Box<CollectionChanged>),
    RecordStatusChanged(Box<StatusChanged>),
    RecordSubdefCreated(Box<SubdefCreated>),
    RecordSubdefCreationFailed(Box<SubdefFailed>),
    UserCreated(Box<User>),
    UserDeleted(Box<User>),
    UserRegistrationGranted(Box<Registration>),
    UserRegistrationRejected(Box<Registration>),
    OrderCreated(Box<Order>),
    OrderDelivered(Box<Order>),
    OrderDenied(Box<Order>),
    /// An event name Phraseanet 4.1 does not send: passed on with its JSON.
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
    #[serde(default, deserialize_with = "php_opt_int")]
    pub id: Option<i64>,
    pub title: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub description: String,
    pub is_public: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    #[serde(default, deserialize_with = "php_opt_int")]
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

/// The record an event is about (`data`'s common fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Asset {
    #[serde(deserialize_with = "php_int")]
    pub databox_id: i64,
    #[serde(deserialize_with = "php_int")]
    pub record_id: i64,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub collection_name: String,
    #[serde(deserialize_with = "php_int")]
    pub base_id: i64,
    pub record_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordCreated {
    #[serde(flatten)]
    pub asset: Asset,
    pub media_type: Option<String>,
    #[serde(rename = "type")]
    pub mime_type: Option<String>,
    pub original_name: Option<String>,
    #[serde(default, deserialize_with = "php_opt_int")]
    pub initiator_user_id: Option<i64>,
    pub permalink: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordEdited {
    #[serde(flatten)]
    pub asset: Asset,
    #[serde(default)]
    pub description: BeforeAfterFields,
}

/// A description before and after an edit, as label → value.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct BeforeAfterFields {
    #[serde(default, deserialize_with = "php_map")]
    pub before: Vec<(String, String)>,
    #[serde(default, deserialize_with = "php_map")]
    pub after: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Collection {
    #[serde(
        rename = "collection_name",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub name: String,
    #[serde(deserialize_with = "php_int")]
    pub base_id: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CollectionChanged {
    #[serde(flatten)]
    pub asset: Asset,
    pub before: Collection,
    pub after: Collection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusBit {
    #[serde(deserialize_with = "php_int")]
    pub bit: i64,
    pub state: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Statuses {
    #[serde(default, deserialize_with = "php_list")]
    pub status: Vec<StatusBit>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusChanged {
    #[serde(flatten)]
    pub asset: Asset,
    pub before: Statuses,
    pub after: Statuses,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubdefCreated {
    #[serde(flatten)]
    pub asset: Asset,
    pub subdef_name: String,
    pub permalink: Option<String>,
    pub original_name: Option<String>,
    #[serde(default, deserialize_with = "php_opt_int")]
    pub size: Option<i64>,
    #[serde(rename = "type")]
    pub mime_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubdefFailed {
    #[serde(flatten)]
    pub asset: Asset,
    pub subdef_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "php_int")]
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub email: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Registration {
    pub user: User,
    /// base id → collection label.
    #[serde(default, deserialize_with = "php_map")]
    pub granted: Vec<(String, String)>,
    #[serde(default, deserialize_with = "php_map")]
    pub rejected: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    pub user: User,
    #[serde(rename = "order", deserialize_with = "php_int")]
    pub order_id: i64,
}

/// Why a body is not an event. The message goes back to the sender in a 400.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "the body is not UTF-8 (invalid bytes at offset {0}); JSON text must be UTF-8 (RFC 8259)"
    )]
    NotUtf8(usize),
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

/// The top-level keys the host reads itself; the rest is left unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow, rename = "webhookId")]
    webhook_id: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    instance_name: Option<&'a RawValue>,
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
}

/// `data`, the body of every `record.*` event.
#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct UserBody {
    user: User,
}

impl Event {
    /// Parses `raw` as a Phraseanet event, in either format, under the id `id`.
    ///
    /// A well-formed `new_feed_entry` — most of the traffic — is read in one pass.
    /// Anything else, or anything that pass refuses, takes the careful way, which
    /// checks field by field and says exactly what is wrong.
    pub fn parse(id: String, raw: Bytes) -> Result<Event, EventError> {
        // serde_json checks UTF-8 only in the strings it reads: bytes inside a
        // field it skips would be stored, passed on raw to clients, and refused by
        // every plugin forever. The whole body is checked once, up front.
        if let Err(e) = std::str::from_utf8(&raw) {
            return Err(EventError::NotUtf8(e.valid_up_to()));
        }
        match Self::quick_feed_entry(&id, &raw) {
            Some(event) => Ok(event),
            None => Self::parse_carefully(id, raw),
        }
    }

    /// One pass for a valid `new_feed_entry` in either format; `None` for any
    /// other event or any doubt.
    fn quick_feed_entry(id: &str, raw: &Bytes) -> Option<Event> {
        #[derive(Deserialize)]
        struct Quick {
            event: Option<String>,
            name: Option<String>,
            #[serde(rename = "webhookId")]
            webhook_id: Option<i64>,
            url: Option<String>,
            instance_name: Option<String>,
            event_time: Option<EventTime>,
            feed: Feed,
            entry: Entry,
            #[serde(default, deserialize_with = "php_list")]
            users: Vec<Subscriber>,
            #[serde(default)]
            users_were_notified: bool,
        }
        let q: Quick = serde_json::from_slice(raw).ok()?;
        let name = match (q.event, q.name) {
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => return None,
        };
        if name != "new_feed_entry" {
            return None;
        }
        let source = match (q.webhook_id, q.url, q.instance_name) {
            (Some(webhook_id), Some(url), Some(instance_name)) => Some(Source {
                webhook_id,
                url,
                instance_name,
                time: q.event_time,
            }),
            (None, ..) => None,
            _ => return None, // a partial envelope: let the careful way say what is missing
        };
        Some(Event {
            id: id.to_string(),
            name,
            raw: raw.clone(),
            payload: Payload::NewFeedEntry(Box::new(NewFeedEntry {
                feed: q.feed,
                entry: q.entry,
                users: q.users,
                users_were_notified: q.users_were_notified,
            })),
            source,
            received_at: crate::model::now_ms(),
        })
    }

    fn parse_carefully(id: String, raw: Bytes) -> Result<Event, EventError> {
        let head: Head<'_> = match serde_json::from_slice(&raw) {
            Ok(h) => h,
            Err(e) => return Err(not_an_object(&raw).unwrap_or(EventError::NotJson(e.to_string()))),
        };
        let name = match (head.event, head.name) {
            (Some(v), _) => string_field("event", v)?,
            (None, Some(v)) => string_field("name", v)?,
            (None, None) => return Err(EventError::NoName),
        };
        if name.is_empty() {
            return Err(EventError::NoName);
        }
        let source = parse_source(&head)?;
        let payload = match name.as_str() {
            "new_feed_entry" => Payload::NewFeedEntry(typed(&raw)?),
            "record.created" => Payload::RecordCreated(Box::new(typed::<Data<_>>(&raw)?.data)),
            "record.edited" => Payload::RecordEdited(Box::new(typed::<Data<_>>(&raw)?.data)),
            "record.deleted" => Payload::RecordDeleted(Box::new(typed::<Data<_>>(&raw)?.data)),
            "record.media_substituted" => {
                Payload::RecordMediaSubstituted(Box::new(typed::<Data<_>>(&raw)?.data))
            }
            "record.collection_changed" => {
                Payload::RecordCollectionChanged(Box::new(typed::<Data<_>>(&raw)?.data))
            }
            "record.status_changed" => {
                Payload::RecordStatusChanged(Box::new(typed::<Data<_>>(&raw)?.data))
            }
            "record.subdef.created" => {
                Payload::RecordSubdefCreated(Box::new(typed::<Data<_>>(&raw)?.data))
            }
            "record.subdef.creation_failed" => {
                Payload::RecordSubdefCreationFailed(Box::new(typed::<Data<_>>(&raw)?.data))
            }
            "user.created" => Payload::UserCreated(Box::new(typed::<UserBody>(&raw)?.user)),
            "user.deleted" => Payload::UserDeleted(Box::new(typed::<UserBody>(&raw)?.user)),
            "user.registration.granted" => Payload::UserRegistrationGranted(typed(&raw)?),
            "user.registration.rejected" => Payload::UserRegistrationRejected(typed(&raw)?),
            "order.created" => Payload::OrderCreated(typed(&raw)?),
            "order.delivered" => Payload::OrderDelivered(typed(&raw)?),
            "order.denied" => Payload::OrderDenied(typed(&raw)?),
            _ => Payload::Other,
        };
        Ok(Event {
            id,
            name,
            raw,
            payload,
            source,
            received_at: crate::model::now_ms(),
        })
    }
}

/// For a body that is valid JSON but not an object, what it is instead.
fn not_an_object(raw: &[u8]) -> Option<EventError> {
    let first = raw.iter().find(|b| !b.is_ascii_whitespace())?;
    let kind = match first {
        b'n' => {
            return serde_json::from_slice::<Value>(raw)
                .ok()
                .map(|_| EventError::Null);
        }
        b'[' => "array",
        b'"' => "string",
        b't' | b'f' => "boolean",
        b'-' | b'0'..=b'9' => "number",
        _ => return None,
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(raw)
        .ok()
        .map(|_| EventError::NotObject(kind))
}

fn kind_of(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

fn wrong(field: &str, problem: &str, got: &RawValue) -> EventError {
    EventError::Field {
        field: field.to_string(),
        problem: format!("{problem}, not {}", kind_of(got)),
    }
}

fn string_field(field: &str, v: &RawValue) -> Result<String, EventError> {
    serde_json::from_str::<String>(v.get()).map_err(|_| wrong(field, "must be a string", v))
}

/// The envelope is all or nothing: `webhookId` marks the current format, and then
/// `url` and `instance_name` must be there too.
fn parse_source(head: &Head<'_>) -> Result<Option<Source>, EventError> {
    let Some(id) = head.webhook_id else {
        return Ok(None);
    };
    let webhook_id = serde_json::from_str::<i64>(id.get())
        .map_err(|_| wrong("webhookId", "must be an integer", id))?;
    let text = |key: &str, v: Option<&RawValue>| match v {
        Some(v) => string_field(key, v),
        None => Err(EventError::Field {
            field: key.to_string(),
            problem: "is missing (an event with `webhookId` carries the whole envelope)".into(),
        }),
    };
    let time = match head.event_time {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => {
            Some(
                serde_json::from_str::<EventTime>(v.get()).map_err(|e| EventError::Field {
                    field: "event_time".into(),
                    problem: format!("must be {{\"date\": …, \"timezone\": …}} ({e})"),
                })?,
            )
        }
    };
    Ok(Some(Source {
        webhook_id,
        url: text("url", head.url)?,
        instance_name: text("instance_name", head.instance_name)?,
        time,
    }))
}

fn typed<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, EventError> {
    // The quick way first; only a failure pays for finding the path to blame.
    if let Ok(v) = serde_json::from_slice(raw) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        EventError::Field {
            field: path,
            problem: e.into_inner().to_string(),
        }
    })
}

/// PHP's `json_encode` writes an empty array as `[]` but a list with holes as a map;
/// accept both, and `null`. (A visitor, not an untagged enum: that would buffer
/// the whole list before looking at it.)
fn php_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut s: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = s.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((_, x)) = m.next_entry::<serde::de::IgnoredAny, T>()? {
                out.push(x);
            }
            Ok(out)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// A string → string map, in the order written; PHP writes an empty one as `[]`.
/// Values that are numbers or booleans are taken as their JSON text.
fn php_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings, or an empty array")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, Value>()? {
                let v = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                out.push((k, v));
            }
            Ok(out)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut s: A,
        ) -> Result<Self::Value, A::Error> {
            if s.next_element::<serde::de::IgnoredAny>()?.is_some() {
                return Err(serde::de::Error::custom(
                    "expected an object of strings, found a non-empty array",
                ));
            }
            Ok(Vec::new())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V)
}

/// An integer, also when PHP wrote it as a numeric string (`"12"`).
fn php_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    php_opt_int(d)?.ok_or_else(|| serde::de::Error::custom("expected an integer, found null"))
}

fn php_opt_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            i64::try_from(n)
                .map(Some)
                .map_err(|_| E::custom("integer too large"))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            s.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::custom(format!("expected an integer, found {s:?}")))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
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
    fn the_quick_and_the_careful_way_agree() {
        for raw in [CURRENT, DOCUMENTED] {
            let quick =
                Event::quick_feed_entry("evt_x", &Bytes::from(raw)).expect("takes the quick way");
            let careful = Event::parse_carefully("evt_x".into(), Bytes::from(raw)).unwrap();
            assert_eq!(
                (&quick.name, &quick.payload, &quick.source),
                (&careful.name, &careful.payload, &careful.source)
            );
        }
        // A partial envelope or a wrong type is left to the careful way.
        let partial = r#"{"event":"new_feed_entry","webhookId":1,"feed":{"title":"t"},"entry":{"title":"e","author":{}}}"#;
        assert!(Event::quick_feed_entry("evt_x", &Bytes::from(partial)).is_none());
        assert!(
            parse(partial)
                .unwrap_err()
                .to_string()
                .contains("`url` is missing")
        );
    }

    #[test]
    fn every_phraseanet_event_has_a_typed_view() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/events");
        for name in KNOWN_EVENTS {
            let raw = std::fs::read(format!("{dir}/{name}.json")).unwrap();
            let e = Event::parse("evt_test".into(), Bytes::from(raw))
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(e.name, *name);
            assert_ne!(e.payload, Payload::Other, "{name}");
            assert!(e.source.is_some(), "{name}");
        }
        let e = parse(include_str!(
            "../../tests/fixtures/events/record.edited.json"
        ))
        .unwrap();
        let Payload::RecordEdited(r) = e.payload else {
            panic!()
        };
        assert_eq!(r.asset.record_id, 4521);
        assert_eq!(
            r.description.after,
            vec![("Title".to_string(), "Palme d\u{2019}or 2026".to_string())]
        );
        let e = parse(include_str!(
            "../../tests/fixtures/events/user.registration.granted.json"
        ))
        .unwrap();
        let Payload::UserRegistrationGranted(r) = e.payload else {
            panic!()
        };
        assert_eq!(
            (r.granted, r.rejected),
            (vec![("3".to_string(), "Press".to_string())], vec![])
        );
        // PHP sometimes writes ids as strings.
        let e = parse(
            r#"{"event":"order.denied","user":{"id":"88","email":"a@b","login":"a"},"order":"7"}"#,
        )
        .unwrap();
        assert!(matches!(e.payload, Payload::OrderDenied(o) if o.order_id == 7 && o.user.id == 88));
        // An event name Phraseanet does not send is accepted as `other`.
        assert_eq!(
            parse(r#"{"event":"basket.shared","basket":{}}"#)
                .unwrap()
                .payload,
            Payload::Other
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert!(msg("null").contains("null"));
        assert!(msg("[1]").contains("array"));
        assert!(msg("\"x\"").contains("string"));
        assert!(msg("{").contains("not JSON"));
        assert!(msg("{}").contains("names no event"));
        assert!(msg("true").contains("boolean"));
        assert!(msg("12").contains("number"));
        let m = msg(r#"{"event":"record.created","data":{"databox_id":1}}"#);
        assert!(m.starts_with("`data`") && m.contains("record_id"), "{m}");
        let m = msg(r#"{"event":"user.created","user":{"id":"x"}}"#);
        assert!(m.starts_with("`user.id`"), "{m}");
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

    #[test]
    fn a_body_with_invalid_utf8_anywhere_is_refused() {
        // Bytes in a field the parser skips, in each way UTF-8 can be broken:
        // a stray byte, an overlong form, an encoded surrogate, a truncated form.
        for bad in [
            &b"\xff\xfe junk"[..],
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xe2\x82",
        ] {
            let mut body = CURRENT.trim_end().trim_end_matches('}').as_bytes().to_vec();
            body.extend_from_slice(b",\"x_unknown\":\"");
            body.extend_from_slice(bad);
            body.extend_from_slice(b"\"}");
            let e = Event::parse("evt_test".into(), Bytes::from(body)).unwrap_err();
            assert!(matches!(e, EventError::NotUtf8(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("UTF-8"), "{e}");
        }
    }

    /// Every real event of the fixtures, for the property tests.
    fn samples() -> Vec<&'static str> {
        vec![
            CURRENT,
            DOCUMENTED,
            include_str!("../../tests/fixtures/events/record.created.json"),
            include_str!("../../tests/fixtures/events/record.edited.json"),
            include_str!("../../tests/fixtures/events/record.status_changed.json"),
            include_str!("../../tests/fixtures/events/record.subdef.created.json"),
            include_str!("../../tests/fixtures/events/user.created.json"),
            include_str!("../../tests/fixtures/events/user.registration.granted.json"),
            include_str!("../../tests/fixtures/events/order.created.json"),
        ]
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A real event with a few bytes changed, inserted or removed.
        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            let edits =
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8);
            (prop::sample::select(samples()), edits).prop_map(|(text, edits)| {
                let mut b = text.as_bytes().to_vec();
                for (at, byte, op) in edits {
                    let (len, i) = (b.len(), at.index(b.len().max(1)));
                    match op {
                        0 if len > 0 => b[i.min(len - 1)] = byte,
                        1 => b.insert(i.min(len), byte),
                        _ if len > 0 => {
                            b.remove(i.min(len - 1));
                        }
                        _ => {}
                    }
                }
                b
            })
        }

        fn check(bytes: Vec<u8>) {
            let raw = Bytes::from(bytes);
            // Never a panic; and whatever is accepted keeps its bytes exactly,
            // since they are what a client without a plugin receives.
            if let Ok(e) = Event::parse("evt_prop".into(), raw.clone()) {
                assert_eq!(e.raw, raw);
                assert!(std::str::from_utf8(&e.raw).is_ok());
                assert!(!e.name.is_empty());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                check(bytes);
            }

            #[test]
            fn mutated_real_events_never_panic(bytes in mutated()) {
                check(bytes);
            }

            #[test]
            fn json_shaped_noise_never_panics(v in json_value()) {
                check(v.to_string().into_bytes());
            }
        }

        /// Arbitrary JSON, with Phraseanet's field names likely, so that the parser
        /// gets past the first key now and then.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let key = prop_oneof![
                Just("event".to_string()),
                Just("name".to_string()),
                Just("data".to_string()),
                Just("feed".to_string()),
                Just("entry".to_string()),
                Just("users".to_string()),
                Just("webhookId".to_string()),
                Just("url".to_string()),
                Just("user".to_string()),
                "[a-z_]{1,8}",
            ];
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::json!(f)),
                prop_oneof![
                    Just("new_feed_entry".to_string()),
                    Just("record.created".to_string()),
                    ".{0,12}"
                ]
                .prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::vec((key.clone(), inner), 0..6)
                        .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
                ]
            })
        }
    }
}
