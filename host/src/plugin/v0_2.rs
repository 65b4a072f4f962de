//! Bindings for world `hookwasm:plugin/plugin@0.2.0`: a typed record for every
//! Phraseanet event, the time the host received it, and the delivery's id. Frozen
//! once released, like `v0_1`.

use wasmtime::Store;

use super::{CallContext, HostState, PluginError, Verdict};
use crate::event::{self as ev, Event, Payload as P};

wasmtime::component::bindgen!({
    path: "../wit/plugin-0.2.0",
    world: "plugin",
});

use self::hookwasm::plugin::types as t;

world_glue!("0.2.0");

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
        delivery_id: cx.delivery_id.to_string(),
        config: cx.config.to_vec(),
    };
    let answer = instance
        .hookwasm_plugin_handler()
        .call_handle(&mut *store, &ev, &client)?;
    Ok(from_wit(answer))
}

fn asset(a: &ev::Asset) -> t::Asset {
    t::Asset {
        databox_id: a.databox_id,
        record_id: a.record_id,
        collection_name: a.collection_name.clone(),
        base_id: a.base_id,
        record_type: a.record_type.clone(),
    }
}

fn user(u: &ev::User) -> t::User {
    t::User {
        id: u.id,
        email: u.email.clone(),
        login: u.login.clone(),
    }
}

fn fields(v: &[(String, String)]) -> Vec<t::FieldValue> {
    v.iter()
        .map(|(label, value)| t::FieldValue {
            label: label.clone(),
            value: value.clone(),
        })
        .collect()
}

/// base id → label; a key that is not a number (never seen) keeps its label under 0.
fn bases(v: &[(String, String)]) -> Vec<t::BaseLabel> {
    v.iter()
        .map(|(id, label)| t::BaseLabel {
            base_id: id.trim().parse().unwrap_or(0),
            label: label.clone(),
        })
        .collect()
}

fn bits(v: &ev::Statuses) -> Vec<t::StatusBit> {
    v.status
        .iter()
        .map(|b| t::StatusBit {
            bit: b.bit.clamp(0, u32::MAX as i64) as u32,
            state: b.state,
        })
        .collect()
}

fn registration(r: &ev::Registration) -> t::Registration {
    t::Registration {
        user: user(&r.user),
        granted: bases(&r.granted),
        rejected: bases(&r.rejected),
    }
}

fn order(o: &ev::Order) -> t::Order {
    t::Order {
        user: user(&o.user),
        order_id: o.order_id,
    }
}

fn to_wit(e: &Event) -> Result<t::Event, String> {
    let json = std::str::from_utf8(&e.raw)
        .map_err(|_| "the event is not UTF-8".to_string())?
        .to_string();
    let payload = match &e.payload {
        P::NewFeedEntry(n) => t::Payload::NewFeedEntry(t::NewFeedEntry {
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
        P::RecordCreated(r) => t::Payload::RecordCreated(t::RecordCreated {
            asset: asset(&r.asset),
            media_type: r.media_type.clone(),
            mime_type: r.mime_type.clone(),
            original_name: r.original_name.clone(),
            initiator_user_id: r.initiator_user_id,
            permalink: r.permalink.clone(),
        }),
        P::RecordEdited(r) => t::Payload::RecordEdited(t::RecordEdited {
            asset: asset(&r.asset),
            before: fields(&r.description.before),
            after: fields(&r.description.after),
        }),
        P::RecordDeleted(a) => t::Payload::RecordDeleted(asset(a)),
        P::RecordMediaSubstituted(a) => t::Payload::RecordMediaSubstituted(asset(a)),
        P::RecordCollectionChanged(r) => {
            t::Payload::RecordCollectionChanged(t::CollectionChanged {
                asset: asset(&r.asset),
                before: t::Collection {
                    name: r.before.name.clone(),
                    base_id: r.before.base_id,
                },
                after: t::Collection {
                    name: r.after.name.clone(),
                    base_id: r.after.base_id,
                },
            })
        }
        P::RecordStatusChanged(r) => t::Payload::RecordStatusChanged(t::StatusChanged {
            asset: asset(&r.asset),
            before: bits(&r.before),
            after: bits(&r.after),
        }),
        P::RecordSubdefCreated(r) => t::Payload::RecordSubdefCreated(t::SubdefCreated {
            asset: asset(&r.asset),
            subdef_name: r.subdef_name.clone(),
            permalink: r.permalink.clone(),
            original_name: r.original_name.clone(),
            size: r.size.and_then(|s| u64::try_from(s).ok()),
            mime_type: r.mime_type.clone(),
        }),
        P::RecordSubdefCreationFailed(r) => {
            t::Payload::RecordSubdefCreationFailed(t::SubdefFailed {
                asset: asset(&r.asset),
                subdef_name: r.subdef_name.clone(),
            })
        }
        P::UserCreated(u) => t::Payload::UserCreated(user(u)),
        P::UserDeleted(u) => t::Payload::UserDeleted(user(u)),
        P::UserRegistrationGranted(r) => t::Payload::UserRegistrationGranted(registration(r)),
        P::UserRegistrationRejected(r) => t::Payload::UserRegistrationRejected(registration(r)),
        P::OrderCreated(o) => t::Payload::OrderCreated(order(o)),
        P::OrderDelivered(o) => t::Payload::OrderDelivered(order(o)),
        P::OrderDenied(o) => t::Payload::OrderDenied(order(o)),
        P::Other => t::Payload::Other,
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
        received_at: e.received_at.max(0) as u64,
    })
}

/// A bare call into an instance, with arguments prepared in advance: the floor
/// the plugin benchmark measures the host's per-event overhead against.
#[doc(hidden)]
pub struct Bare {
    store: Store<HostState>,
    instance: Plugin,
    event: t::Event,
    client: t::Client,
}

impl Bare {
    pub(super) fn new(store: Store<HostState>, instance: Plugin, event: &Event) -> Bare {
        let client = t::Client {
            id: "bench".into(),
            delivery_id: "msg_bench".into(),
            config: Vec::new(),
        };
        Bare {
            store,
            instance,
            event: to_wit(event).expect("UTF-8 event"),
            client,
        }
    }

    /// One call; the answer is dropped.
    pub fn call(&mut self) {
        self.store.set_epoch_deadline(u64::MAX / 2);
        let answer = self.instance.hookwasm_plugin_handler().call_handle(
            &mut self.store,
            &self.event,
            &self.client,
        );
        std::hint::black_box(answer.expect("no trap")).ok();
    }
}
