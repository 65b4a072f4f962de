//! Bindings for world `hookwasm:plugin/plugin@0.2.0`: a typed record for every
//! Phraseanet event, the time the host received it, and the delivery's id. Frozen
//! once released, like `v0_1`.

use wasmtime::Store;

use super::{CallContext, HostState, PluginError, Verdict};
use crate::event::{self as ev, Event, Payload as P};

wasmtime::component::bindgen!({
    path: "../wit/plugin-0.2.0",
    world: "plugin",
    // The event and the client are lent to the call: their strings and bytes
    // are read from the host's own values as they are copied into the guest,
    // not first cloned into owned records (issue #15).
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
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
    let lists = Lists::of(event);
    let ev = to_wit(event, &lists).map_err(wasmtime::Error::msg)?;
    let config = config(cx);
    let client = t::Client {
        id: cx.client_id,
        delivery_id: cx.delivery_id,
        config: &config,
    };
    let answer = instance
        .hookwasm_plugin_handler()
        .call_handle(&mut *store, ev, client)?;
    Ok(from_wit(answer))
}

/// The lists an event's records hold, built beside it: the world's types
/// borrow them, as they borrow the event's strings.
#[derive(Default)]
struct Lists<'a> {
    users: Vec<t::Subscriber<'a>>,
    fields: [Vec<t::FieldValue<'a>>; 2],
    bits: [Vec<t::StatusBit>; 2],
    bases: [Vec<t::BaseLabel<'a>>; 2],
}

impl<'a> Lists<'a> {
    fn of(e: &'a Event) -> Lists<'a> {
        let mut l = Lists::default();
        match &e.payload {
            P::NewFeedEntry(n) => l.users = subscribers(&n.users),
            P::RecordEdited(r) => {
                l.fields = [fields(&r.description.before), fields(&r.description.after)]
            }
            P::RecordStatusChanged(r) => l.bits = [bits(&r.before), bits(&r.after)],
            P::UserRegistrationGranted(r) | P::UserRegistrationRejected(r) => {
                l.bases = [bases(&r.granted), bases(&r.rejected)]
            }
            _ => {}
        }
        l
    }
}

fn asset(a: &ev::Asset) -> t::Asset<'_> {
    t::Asset {
        databox_id: a.databox_id,
        record_id: a.record_id,
        collection_name: &a.collection_name,
        base_id: a.base_id,
        record_type: a.record_type.as_deref(),
    }
}

fn user(u: &ev::User) -> t::User<'_> {
    t::User {
        id: u.id,
        email: &u.email,
        login: &u.login,
    }
}

fn fields(v: &[(String, String)]) -> Vec<t::FieldValue<'_>> {
    v.iter()
        .map(|(label, value)| t::FieldValue { label, value })
        .collect()
}

/// base id → label; a key that is not a number (never seen) keeps its label under 0.
fn bases(v: &[(String, String)]) -> Vec<t::BaseLabel<'_>> {
    v.iter()
        .map(|(id, label)| t::BaseLabel {
            base_id: id.trim().parse().unwrap_or(0),
            label,
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

fn registration<'a>(r: &'a ev::Registration, l: &'a Lists<'a>) -> t::Registration<'a> {
    t::Registration {
        user: user(&r.user),
        granted: &l.bases[0],
        rejected: &l.bases[1],
    }
}

fn order(o: &ev::Order) -> t::Order<'_> {
    t::Order {
        user: user(&o.user),
        order_id: o.order_id,
    }
}

/// `e` in this world's types, borrowing from it and from `l` (`Lists::of(e)`).
fn to_wit<'a>(e: &'a Event, l: &'a Lists<'a>) -> Result<t::Event<'a>, String> {
    let json = std::str::from_utf8(&e.raw).map_err(|_| "the event is not UTF-8".to_string())?;
    let payload = match &e.payload {
        P::NewFeedEntry(n) => t::Payload::NewFeedEntry(t::NewFeedEntry {
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
            users: &l.users,
            users_were_notified: n.users_were_notified,
        }),
        P::RecordCreated(r) => t::Payload::RecordCreated(t::RecordCreated {
            asset: asset(&r.asset),
            media_type: r.media_type.as_deref(),
            mime_type: r.mime_type.as_deref(),
            original_name: r.original_name.as_deref(),
            initiator_user_id: r.initiator_user_id,
            permalink: r.permalink.as_deref(),
        }),
        P::RecordEdited(r) => t::Payload::RecordEdited(t::RecordEdited {
            asset: asset(&r.asset),
            before: &l.fields[0],
            after: &l.fields[1],
        }),
        P::RecordDeleted(a) => t::Payload::RecordDeleted(asset(a)),
        P::RecordMediaSubstituted(a) => t::Payload::RecordMediaSubstituted(asset(a)),
        P::RecordCollectionChanged(r) => {
            t::Payload::RecordCollectionChanged(t::CollectionChanged {
                asset: asset(&r.asset),
                before: t::Collection {
                    name: &r.before.name,
                    base_id: r.before.base_id,
                },
                after: t::Collection {
                    name: &r.after.name,
                    base_id: r.after.base_id,
                },
            })
        }
        P::RecordStatusChanged(r) => t::Payload::RecordStatusChanged(t::StatusChanged {
            asset: asset(&r.asset),
            before: &l.bits[0],
            after: &l.bits[1],
        }),
        P::RecordSubdefCreated(r) => t::Payload::RecordSubdefCreated(t::SubdefCreated {
            asset: asset(&r.asset),
            subdef_name: &r.subdef_name,
            permalink: r.permalink.as_deref(),
            original_name: r.original_name.as_deref(),
            size: r.size.and_then(|s| u64::try_from(s).ok()),
            mime_type: r.mime_type.as_deref(),
        }),
        P::RecordSubdefCreationFailed(r) => {
            t::Payload::RecordSubdefCreationFailed(t::SubdefFailed {
                asset: asset(&r.asset),
                subdef_name: &r.subdef_name,
            })
        }
        P::UserCreated(u) => t::Payload::UserCreated(user(u)),
        P::UserDeleted(u) => t::Payload::UserDeleted(user(u)),
        P::UserRegistrationGranted(r) => t::Payload::UserRegistrationGranted(registration(r, l)),
        P::UserRegistrationRejected(r) => t::Payload::UserRegistrationRejected(registration(r, l)),
        P::OrderCreated(o) => t::Payload::OrderCreated(order(o)),
        P::OrderDelivered(o) => t::Payload::OrderDelivered(order(o)),
        P::OrderDenied(o) => t::Payload::OrderDenied(order(o)),
        P::Other => t::Payload::Other,
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
        received_at: e.received_at.max(0) as u64,
    })
}

/// A bare call into an instance, with arguments prepared in advance: the floor
/// the plugin benchmark measures the host's per-event overhead against. Its
/// event, and the lists it borrows, live as long as the process (a bench's).
#[doc(hidden)]
pub struct Bare {
    store: Store<HostState>,
    instance: Plugin,
    event: t::Event<'static>,
    client: t::Client<'static>,
}

impl Bare {
    pub(super) fn new(store: Store<HostState>, instance: Plugin, event: &Event) -> Bare {
        let event: &'static Event = Box::leak(Box::new(event.clone()));
        let lists: &'static Lists<'static> = Box::leak(Box::new(Lists::of(event)));
        let client = t::Client {
            id: "bench",
            delivery_id: "msg_bench",
            config: &[],
        };
        Bare {
            store,
            instance,
            event: to_wit(event, lists).expect("UTF-8 event"),
            client,
        }
    }

    /// One call; the answer is dropped.
    pub fn call(&mut self) {
        self.store.set_epoch_deadline(u64::MAX / 2);
        let answer = self.instance.hookwasm_plugin_handler().call_handle(
            &mut self.store,
            // Shallow copies: the records hold only references.
            self.event.clone(),
            self.client.clone(),
        );
        std::hint::black_box(answer.expect("no trap")).ok();
    }
}
