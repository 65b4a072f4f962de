//! Bindings for world `hookwasm:plugin/plugin@0.1.0`, frozen with it: the
//! conversions between the host's types and this version's live here, so a newer
//! world never changes what an old plugin sees.

use wasmtime::Store;

use super::{CallContext, HostState, PluginError, Verdict};
use crate::event::{self, Event};

wasmtime::component::bindgen!({
    path: "../wit/plugin-0.1.0",
    world: "plugin",
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
    let ev = to_wit(event).map_err(wasmtime::Error::msg)?;
    let client = t::Client {
        id: cx.client_id.to_string(),
        config: cx.config.to_vec(),
    };
    let answer = instance
        .hookwasm_plugin_handler()
        .call_handle(&mut *store, &ev, &client)?;
    Ok(from_wit(answer))
}

fn to_wit(e: &Event) -> Result<t::Event, String> {
    let json = std::str::from_utf8(&e.raw)
        .map_err(|_| "the event is not UTF-8".to_string())?
        .to_string();
    let payload = match &e.payload {
        event::Payload::NewFeedEntry(n) => t::Payload::NewFeedEntry(t::NewFeedEntry {
            feed: t::Feed {
                id: n.feed.id,
                title: n.feed.title.clone(),
                description: n.feed.description.clone(),
                is_public: n.feed.is_public,
            },
            entry: t::Entry {
                id: n.entry.id,
                author: t::Author {
                    name: n.entry.author.name.clone(),
                    email: n.entry.author.email.clone(),
                },
                title: n.entry.title.clone(),
                description: n.entry.description.clone(),
            },
            users: n
                .users
                .iter()
                .map(|u| t::Subscriber {
                    email: u.email.clone(),
                    firstname: u.firstname.clone(),
                    lastname: u.lastname.clone(),
                })
                .collect(),
            users_were_notified: n.users_were_notified,
        }),
        // 0.1.0 typed only new_feed_entry; every other event stays `other` for
        // the plugins built against it.
        _ => t::Payload::Other,
    };
    let source = e.source.as_ref().map(|s| t::Source {
        webhook_id: s.webhook_id,
        url: s.url.clone(),
        instance_name: s.instance_name.clone(),
        time: s.time.as_ref().map(|t| t::EventTime {
            local: t.local.clone(),
            timezone: t.timezone.clone(),
        }),
    });
    Ok(t::Event {
        id: e.id.clone(),
        name: e.name.clone(),
        json,
        payload,
        source,
    })
}
