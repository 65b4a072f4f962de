//! Hides the subscribers' e-mail addresses in `new_feed_entry` events before they
//! leave the host. Config key `mode`:
//!
//! - `mask` (default): `bradley72@yahoo.com` becomes `b********@yahoo.com`;
//! - `remove`: the address key is taken out of each user.
//!
//! Both formats are handled (`email` in the current one, `mail` in the documented
//! one). The rest of the event is delivered as it was; other events pass unchanged.

use hookwasm_plugin::{Client, ClientExt, Error, Event, EventExt, Plugin, Verdict};
use serde_json::Value;

struct RedactSubscribers;

impl Plugin for RedactSubscribers {
    fn handle(event: Event, client: Client) -> Result<Verdict, Error> {
        if event.new_feed_entry().is_none() {
            return Ok(hookwasm_plugin::deliver(event.json.into_bytes(), None));
        }
        let remove = match client.get_or("mode", "mask") {
            "mask" => false,
            "remove" => true,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "mode must be \"mask\" or \"remove\", not {other:?}"
                )));
            }
        };
        let mut doc = event.value()?;
        if let Some(users) = doc.get_mut("users").and_then(Value::as_array_mut) {
            for user in users.iter_mut().filter_map(Value::as_object_mut) {
                for key in ["email", "mail"] {
                    if remove {
                        user.remove(key);
                    } else if let Some(Value::String(address)) = user.get_mut(key) {
                        *address = mask(address);
                    }
                }
            }
        }
        hookwasm_plugin::deliver_json(&doc)
    }
}

/// Keeps the first character of the local part and the whole domain.
fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!(
                "{first}{}@{domain}",
                "*".repeat(local.chars().count().saturating_sub(1).max(1))
            )
        }
        None => "*".repeat(address.chars().count().max(1)),
    }
}

hookwasm_plugin::export!(RedactSubscribers);

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks() {
        assert_eq!(mask("bradley72@yahoo.com"), "b********@yahoo.com");
        assert_eq!(mask("a@b.c"), "a*@b.c");
        assert_eq!(mask("nodomain"), "********");
    }
}
