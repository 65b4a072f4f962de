//! {{name}}: a hookwasm plugin. It turns each new feed entry into a short JSON
//! message and skips every other event; change `handle` to do what your client
//! needs. The plugin interface is documented in hookwasm-plugin/wit/plugin.wit.

use hookwasm_plugin::{Client, ClientExt, Error, Event, EventExt, Level, Plugin, Verdict};
use serde_json::json;

struct Component;

impl Plugin for Component {
    fn handle(event: Event, client: Client) -> Result<Verdict, Error> {
        let Some(entry) = event.new_feed_entry() else {
            return Ok(hookwasm_plugin::skip(format!("{} is not handled yet", event.name)));
        };
        hookwasm_plugin::log(Level::Debug, &format!("{} for client {}", event.name, client.id));
        let mut message = json!({ "text": headline(&entry.feed.title, &entry.entry.title) });
        if let Some(channel) = client.get("channel") {
            message["channel"] = json!(channel);
        }
        hookwasm_plugin::deliver_json(&message)
    }
}

fn headline(feed: &str, title: &str) -> String {
    format!("New in {feed}: {title}")
}

hookwasm_plugin::export!(Component);
