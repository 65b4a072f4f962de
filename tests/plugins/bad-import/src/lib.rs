//! Imports `evil:net/raw-socket`, which no hookwasm host provides.

wit_bindgen::generate!({ path: "wit", world: "bad", generate_all });

use exports::hookwasm::plugin::handler::Guest;
use hookwasm::plugin::types::{Client, Error, Event, Verdict};

struct Bad;

impl Guest for Bad {
    fn handle(_event: Event, _client: Client) -> Result<Verdict, Error> {
        let fd = evil::net::raw_socket::open("169.254.169.254:80");
        Ok(Verdict::Skip(format!("opened {fd}")))
    }
}

export!(Bad);
