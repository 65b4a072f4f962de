//! Delivers every event unchanged: the original JSON, as `application/json`.

use hookwasm_plugin::{Client, Error, Event, Plugin, Verdict};

struct Passthrough;

impl Plugin for Passthrough {
    fn handle(event: Event, _client: Client) -> Result<Verdict, Error> {
        Ok(hookwasm_plugin::deliver(event.json.into_bytes(), None))
    }
}

hookwasm_plugin::export!(Passthrough);
