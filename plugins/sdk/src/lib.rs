//! Write hookwasm plugins in Rust.
//!
//! A plugin decides, for each event and each client, what to send: implement
//! [`Plugin`] for a type and name it in [`export!`]. Build with
//! `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is a component the host loads.
//!
//! ```no_run
//! use hookwasm_plugin::{Client, Error, Event, Plugin, Verdict};
//!
//! struct Passthrough;
//!
//! impl Plugin for Passthrough {
//!     fn handle(event: Event, _client: Client) -> Result<Verdict, Error> {
//!         Ok(hookwasm_plugin::deliver(event.json.into_bytes(), None))
//!     }
//! }
//!
//! hookwasm_plugin::export!(Passthrough);
//! ```
#![deny(missing_docs)]

/// The bindings generated from the world `hookwasm:plugin/plugin@0.2.0`. The WIT
/// is the crate's own copy (`wit/plugin.wit`, byte for byte the released
/// `wit/plugin-0.2.0/plugin.wit` of the repository, which a test checks), so the
/// crate builds wherever it is copied or published.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "hookwasm_plugin::bindings",
    });
}

pub use bindings::exports::hookwasm::plugin::handler::Guest as Plugin;
pub use bindings::hookwasm::plugin::types::{
    Asset, Author, BaseLabel, Client, Collection, CollectionChanged, Delivery, Entry, Error, Event, EventTime, Feed,
    FieldValue, Level, NewFeedEntry, Order, Payload, RecordCreated, RecordEdited, Registration, Source, StatusBit,
    StatusChanged, SubdefCreated, SubdefFailed, Subscriber, User, Verdict,
};

/// Exports a type that implements [`Plugin`] as the component's handler.
///
/// ```no_run
/// # use hookwasm_plugin::*;
/// struct MyPlugin;
///
/// impl Plugin for MyPlugin {
///     fn handle(_event: Event, _client: Client) -> Result<Verdict, Error> {
///         Ok(hookwasm_plugin::skip("nothing to say"))
///     }
/// }
///
/// hookwasm_plugin::export!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::__export_plugin_world!($plugin with_types_in $crate::bindings);

        // The SDK's version, in a custom section of the component: `hookwasm plugin
        // check` reads it to say when a project's copy of the SDK is older than the
        // host's. Here rather than in the SDK so that it lands in the plugin's own
        // object file, which the linker always keeps.
        #[used]
        #[cfg_attr(target_family = "wasm", unsafe(link_section = "hookwasm-plugin-sdk"))]
        static __HOOKWASM_PLUGIN_SDK: [u8; $crate::SDK_VERSION.len()] = $crate::__sdk_version_bytes();
    };
}

/// This SDK's version, the `version` of its `Cargo.toml`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`SDK_VERSION`] as a byte array, for the custom section [`export!`] writes.
#[doc(hidden)]
pub const fn __sdk_version_bytes<const N: usize>() -> [u8; N] {
    let version = SDK_VERSION.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = version[i];
        i += 1;
    }
    out
}

/// Writes a line to the host's log, tagged with the client and the plugin.
///
/// ```no_run
/// # use hookwasm_plugin::*;
/// # fn example(event: Event, client: Client) -> Result<(), Error> {
/// hookwasm_plugin::log(hookwasm_plugin::Level::Info, "skipping a private feed");
/// # Ok(()) }
/// ```
pub fn log(level: Level, message: &str) {
    bindings::hookwasm::plugin::host::log(level, message);
}

/// A delivery of `body`, with `content_type` (the host sends `application/json`
/// when it is `None`) and no extra headers.
///
/// ```no_run
/// # use hookwasm_plugin::*;
/// # fn example(event: Event, client: Client) -> Result<(), Error> {
/// let v = hookwasm_plugin::deliver(b"hello".to_vec(), Some("text/plain"));
/// # Ok(()) }
/// ```
pub fn deliver(body: Vec<u8>, content_type: Option<&str>) -> Verdict {
    Verdict::Deliver(Delivery {
        body,
        content_type: content_type.map(str::to_string),
        headers: Vec::new(),
    })
}

/// A delivery of `value` serialised as JSON.
///
/// ```no_run
/// # use hookwasm_plugin::*;
/// # fn example(event: Event, client: Client) -> Result<(), Error> {
/// let v = hookwasm_plugin::deliver_json(&serde_json::json!({"text": "hi"}))?;
/// # Ok(()) }
/// ```
pub fn deliver_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Verdict, Error> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Failed(format!("cannot serialise the body: {e}")))?;
    Ok(deliver(body, Some("application/json")))
}

/// Nothing is sent to the client for this event; `reason` is recorded.
///
/// ```no_run
/// # use hookwasm_plugin::*;
/// # fn example(event: Event, client: Client) -> Result<Verdict, Error> {
/// return Ok(hookwasm_plugin::skip("the feed is private"));
/// # Ok(skip("")) }
/// ```
pub fn skip(reason: impl Into<String>) -> Verdict {
    Verdict::Skip(reason.into())
}

/// Reading an event's JSON.
pub trait EventExt {
    /// The event's original JSON, parsed.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// let mut doc = event.value()?;
    /// doc["users"] = serde_json::json!([]);
    /// # Ok(()) }
    /// ```
    fn value(&self) -> Result<serde_json::Value, Error>;

    /// The event's original JSON, parsed into your own type.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// // Your own type, or any type serde reads, such as a map:
    /// type Record = std::collections::HashMap<String, serde_json::Value>;
    /// let r: Record = event.parse()?;
    /// # Ok(()) }
    /// ```
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error>;

    /// The typed `new_feed_entry`, or `None` for any other event.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// if let Some(entry) = event.new_feed_entry() { /* … */ }
    /// # Ok(()) }
    /// ```
    fn new_feed_entry(&self) -> Option<&NewFeedEntry>;

    /// The record a `record.*` event is about, or `None` for other events.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// if let Some(asset) = event.asset() { /* asset.record_id, asset.collection_name, … */ }
    /// # Ok(()) }
    /// ```
    fn asset(&self) -> Option<&Asset>;

    /// The user a `user.*` or `order.*` event is about, or `None` for other events.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// if let Some(user) = event.user() { /* user.email, user.login, … */ }
    /// # Ok(()) }
    /// ```
    fn user(&self) -> Option<&User>;
}

impl EventExt for Event {
    fn value(&self) -> Result<serde_json::Value, Error> {
        self.parse()
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.json).map_err(|e| Error::InvalidEvent(format!("{}: {e}", self.name)))
    }

    fn asset(&self) -> Option<&Asset> {
        match &self.payload {
            Payload::RecordCreated(r) => Some(&r.asset),
            Payload::RecordEdited(r) => Some(&r.asset),
            Payload::RecordDeleted(a) | Payload::RecordMediaSubstituted(a) => Some(a),
            Payload::RecordCollectionChanged(r) => Some(&r.asset),
            Payload::RecordStatusChanged(r) => Some(&r.asset),
            Payload::RecordSubdefCreated(r) => Some(&r.asset),
            Payload::RecordSubdefCreationFailed(r) => Some(&r.asset),
            _ => None,
        }
    }

    fn user(&self) -> Option<&User> {
        match &self.payload {
            Payload::UserCreated(u) | Payload::UserDeleted(u) => Some(u),
            Payload::UserRegistrationGranted(r) | Payload::UserRegistrationRejected(r) => Some(&r.user),
            Payload::OrderCreated(o) | Payload::OrderDelivered(o) | Payload::OrderDenied(o) => Some(&o.user),
            _ => None,
        }
    }

    fn new_feed_entry(&self) -> Option<&NewFeedEntry> {
        match &self.payload {
            Payload::NewFeedEntry(n) => Some(n),
            _ => None,
        }
    }
}

/// Reading a client's `[clients.config]`.
pub trait ClientExt {
    /// The value of `key`, if the client's config has it.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// let channel = client.get("channel");
    /// # Ok(()) }
    /// ```
    fn get(&self, key: &str) -> Option<&str>;

    /// The value of `key`, or `default`.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// let mode = client.get_or("mode", "mask");
    /// # Ok(()) }
    /// ```
    fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str;

    /// The value of `key`, or an [`Error::InvalidConfig`] that names it.
    ///
    /// ```no_run
    /// # use hookwasm_plugin::*;
    /// # fn example(event: Event, client: Client) -> Result<(), Error> {
    /// let token = client.require("token")?;
    /// # Ok(()) }
    /// ```
    fn require(&self, key: &str) -> Result<&str, Error>;
}

impl ClientExt for Client {
    fn get(&self, key: &str) -> Option<&str> {
        self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::InvalidConfig(format!("config key `{key}` is missing")))
    }
}
