//! Bindings for world `hookwasm:plugin/plugin@0.1.0`, frozen with it: the
//! conversions between the host's types and this version's live here, so a newer
//! world never changes what an old plugin sees.

use wasmtime::Store;

use super::{CallContext, HostState, PluginError, Verdict};
use crate::event::{self, Event};

wasmtime::component::bindgen!({
    path: "../wit/plugin-0.1.0",
    world: "plugin",
    // The event and the client are lent to the call, as in `v0_2`.
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});

use self::hookwasm::plugin::types as t;

world_glue!("0.1.0");

/// Calls an instance. The outer error is a trap; the inner one the plugin's.
pub fn call(
    instance: &Plugin,
    store: &mut Store<HostState>,
    event: &Event,
    cx: &CallContext<'_>,
) -> wasmtime::Result<Result<Verdict, PluginError>> {
    let users = match &event.payload {
        event::Payload::NewFeedEntry(n) => subscribers(&n.users),
        _ => Vec::new(),
    };
    let ev = to_wit(event, &users).map_err(wasmtime::Error::msg)?;
    let config = config(cx);
    let client = t::Client {
        id: cx.client_id,
        config: &config,
    };
    let answer = instance
        .hookwasm_plugin_handler()
        .call_handle(&mut *store, ev, client)?;
    Ok(from_wit(answer))
}

/// `e` in this world's types, borrowing from it and from `users` (its
/// subscribers in this world's record).
fn to_wit<'a>(e: &'a Event, users: &'a [t::Subscriber<'a>]) -> Result<t::Event<'a>, String> {
    let json = std::str::from_utf8(&e.raw).map_err(|_| "the event is not UTF-8".to_string())?;
    let payload = match &e.payload {
        event::Payload::NewFeedEntry(n) => t::Payload::NewFeedEntry(t::NewFeedEntry {
            feed: t::Feed {
                id: n.feed.id,
                title: &n.feed.title,
                description: &n.feed.description,
                is_public: n.feed.is_public,
            },
            entry: t::Entry {
                id: n.entry.id,
                author: t::Author {
                    name: &n.entry.author.name,
                    email: &n.entry.author.email,
                },
                title: &n.entry.title,
                description: &n.entry.description,
            },
            users,
            users_were_notified: n.users_were_notified,
        }),
        // 0.1.0 typed only new_feed_entry; every other event stays `other` for
        // the plugins built against it.
        _ => t::Payload::Other,
    };
    let source = e.source.as_ref().map(|s| t::Source {
        webhook_id: s.webhook_id,
        url: &s.url,
        instance_name: &s.instance_name,
        time: s.time.as_ref().map(|t| t::EventTime {
            local: &t.local,
            timezone: &t.timezone,
        }),
    });
    Ok(t::Event {
        id: &e.id,
        name: &e.name,
        json,
        payload,
        source,
    })
}
