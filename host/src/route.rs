//! Which clients get an event: every enabled client whose `events` list names
//! it, or that has no list. One delivery (with a fresh `msg_…` id, the
//! `webhook-id` its receiver will see) per client, in client-id order.

use crate::config::Client;
use crate::model::{NewDelivery, new_delivery_id};

/// The enabled clients, sorted by id.
pub struct Routes {
    clients: Vec<Client>,
}

impl Routes {
    pub fn new(clients: &[Client]) -> Routes {
        let mut clients: Vec<Client> = clients.iter().filter(|c| c.enabled).cloned().collect();
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        Routes { clients }
    }

    /// The deliveries an event of this name makes.
    pub fn fan_out(&self, event_name: &str) -> Vec<NewDelivery> {
        self.clients
            .iter()
            .filter(|c| c.wants(event_name))
            .map(|c| NewDelivery {
                id: new_delivery_id(),
                client_id: c.id.clone(),
            })
            .collect()
    }
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
        let routes = Routes::new(&config.clients);
        let ids = |name: &str| -> Vec<String> {
            routes
                .fan_out(name)
                .into_iter()
                .map(|d| d.client_id)
                .collect()
        };
        assert_eq!(ids("new_feed_entry"), ["a-all", "b-feeds"]);
        assert_eq!(ids("record.created"), ["a-all"]);
        let ds = routes.fan_out("new_feed_entry");
        assert_ne!(ds[0].id, ds[1].id, "a delivery id each");
        assert!(ds[0].id.starts_with("msg_"));
    }
}
