//! Which clients get an event: every enabled client whose `events` list names
//! it, or that has no list, as the directory stands when the event arrives. One
//! delivery (with a fresh `msg_…` id, the `webhook-id` its receiver will see)
//! per client, in client-id order.

use std::sync::Arc;

use crate::directory::{Directory, Snapshot};
use crate::model::{NewDelivery, new_delivery_id};

pub struct Routes {
    directory: Arc<Directory>,
}

impl Routes {
    pub fn new(directory: Arc<Directory>) -> Routes {
        Routes { directory }
    }

    /// The deliveries an event of this name makes.
    pub fn fan_out(&self, event_name: &str) -> Vec<NewDelivery> {
        fan_out(&self.directory.current(), event_name)
    }

    /// The delivery an event of this name makes for client `id` alone: none
    /// if it is disabled or its `events` leave it out; `None` if there is no
    /// such client.
    pub fn to_client(&self, id: &str, event_name: &str) -> Option<Vec<NewDelivery>> {
        let snapshot = self.directory.current();
        let c = &snapshot.get(id)?.client;
        Some(
            (c.enabled && c.wants(event_name))
                .then(|| NewDelivery {
                    id: new_delivery_id(),
                    client_id: c.id.clone(),
                })
                .into_iter()
                .collect(),
        )
    }
}

fn fan_out(clients: &Snapshot, event_name: &str) -> Vec<NewDelivery> {
    clients
        .entries
        .iter()
        .map(|e| &e.client)
        .filter(|c| c.enabled && c.wants(event_name))
        .map(|c| NewDelivery {
            id: new_delivery_id(),
            client_id: c.id.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn an_event_goes_to_the_enabled_clients_that_want_it() {
        let config = crate::config::Config::parse(
            r#"
            [server]
            listen = "127.0.0.1:1"
            [plugins]
            dir = "p"
            [store]
            path = "s.db"
            [[clients]]
            id = "b-feeds"
            url = "http://x.org"
            events = ["new_feed_entry"]
            [[clients]]
            id = "a-all"
            url = "http://x.org"
            [[clients]]
            id = "c-off"
            url = "http://x.org"
            enabled = false
            "#,
            Path::new("/"),
        )
        .unwrap();
        let mut entries: Vec<_> = config
            .clients
            .iter()
            .map(|c| {
                Arc::new(crate::directory::Entry {
                    client: c.clone(),
                    origin: crate::directory::Origin::File,
                    plugin: crate::plugin::registry::Source::None,
                    spec: Default::default(),
                })
            })
            .collect();
        entries.sort_by(|a, b| a.client.id.cmp(&b.client.id));
        let snapshot = Snapshot { entries };
        let ids = |name: &str| -> Vec<String> {
            fan_out(&snapshot, name)
                .into_iter()
                .map(|d| d.client_id)
                .collect()
        };
        assert_eq!(ids("new_feed_entry"), ["a-all", "b-feeds"]);
        assert_eq!(ids("record.created"), ["a-all"]);
        let ds = fan_out(&snapshot, "new_feed_entry");
        assert_ne!(ds[0].id, ds[1].id, "a delivery id each");
        assert!(ds[0].id.starts_with("msg_"));
    }
}
