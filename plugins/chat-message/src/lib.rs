//! Turns a `new_feed_entry` into a chat message, the JSON that Slack-style
//! incoming webhooks take:
//!
//! ```json
//! {"text": "New in Cannes Festival: PRESS CONFERENCE - Winners — At the end of …", "channel": "#press"}
//! ```
//!
//! `channel` comes from config key `channel` and is left out when not set. Other
//! events are skipped: a chat channel is no place for raw event JSON.

use hookwasm_plugin::{Client, ClientExt, Error, Event, EventExt, Level, Plugin, Verdict};
use serde_json::json;

struct ChatMessage;

impl Plugin for ChatMessage {
    fn handle(event: Event, client: Client) -> Result<Verdict, Error> {
        let Some(entry) = event.new_feed_entry() else {
            return Ok(hookwasm_plugin::skip(format!("{} is not a new_feed_entry", event.name)));
        };
        let mut text = format!("New in {}: {}", entry.feed.title, entry.entry.title);
        if !entry.entry.description.is_empty() {
            text.push_str(" \u{2014} ");
            text.push_str(&entry.entry.description);
        }
        let mut message = json!({ "text": text });
        if let Some(channel) = client.get("channel") {
            message["channel"] = json!(channel);
        }
        hookwasm_plugin::log(Level::Debug, &format!("chat message for feed {:?}", entry.feed.title));
        hookwasm_plugin::deliver_json(&message)
    }
}

hookwasm_plugin::export!(ChatMessage);
