//! Rendering: what each claimed delivery becomes — a request to send (the
//! plugin's rendering, or the event's own bytes for a client without a plugin),
//! or a parking update (held: no working plugin; `plugin_error`: the plugin
//! failed on this event; skipped: the plugin said so). Plugin calls run on the
//! blocking pool, a batch per trip.

use std::sync::Arc;

use crate::config::Client;
use crate::event::Event;
use crate::model::{Job, Rendered, State, StoredRender, Update};
use crate::plugin::registry::{Lookup, Registry, Source};
use crate::plugin::{CallContext, PluginError, Verdict};

/// What a delivery becomes.
pub enum Outcome {
    Send(StoredRender),
    Park(Update),
}

/// Renders `jobs` for `client`, in order.
pub async fn render(
    client: &Client,
    source: &Source,
    registry: &Registry,
    jobs: &[Job],
) -> Vec<Outcome> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let Some(lookup) = registry.lookup(source) else {
        // No plugin: the event goes out exactly as received.
        return jobs
            .iter()
            .map(|j| {
                Outcome::Send(StoredRender {
                    request: Rendered {
                        body: j.event.raw.to_vec(),
                        content_type: None,
                        headers: Vec::new(),
                    },
                    plugin: None,
                })
            })
            .collect();
    };
    let plugin = match lookup {
        Lookup::Ready(p) => p,
        other => {
            let reason = match (other, source) {
                (Lookup::Broken(e), Source::File(file)) => {
                    format!("plugin {file} does not load: {e}")
                }
                (Lookup::Broken(e), _) => format!("the uploaded plugin does not load: {e}"),
                (_, Source::File(file)) => format!("plugin {file} is not in plugins.dir"),
                _ => "the uploaded plugin is not there".to_string(),
            };
            return jobs
                .iter()
                .map(|j| {
                    let mut u = Update::new(j.seq, State::Held);
                    u.reason = Some(reason.clone());
                    Outcome::Park(u)
                })
                .collect();
        }
    };
    let tag = format!("{}@{}", plugin.file, plugin.hash);
    let runtime = registry.runtime().clone();
    let owned = client.clone();
    let work: Vec<(Arc<Event>, String)> = jobs
        .iter()
        .map(|j| (j.event.clone(), j.id.clone()))
        .collect();
    let p = plugin.clone();
    let results = tokio::task::spawn_blocking(move || {
        work.iter()
            .map(|(event, delivery_id)| {
                let cx = CallContext {
                    client_id: &owned.id,
                    delivery_id,
                    config: &owned.config,
                    limits: &owned.limits,
                };
                runtime.call(&p, event, &cx)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| {
        jobs.iter()
            .map(|_| Err(PluginError::Trap(format!("the host's call crashed: {e}"))))
            .collect()
    });

    jobs.iter()
        .zip(results)
        .map(|(j, r)| match r {
            Ok(Verdict::Deliver(request)) => Outcome::Send(StoredRender { request, plugin: Some(tag.clone()) }),
            Ok(Verdict::Skip(reason)) => {
                let mut u = Update::new(j.seq, State::Skipped);
                u.reason = Some(reason);
                u.plugin = Some(tag.clone());
                Outcome::Park(u)
            }
            Err(e) => {
                tracing::warn!(client = %client.id, plugin = ?tag, delivery = %j.id, event = %j.event.id,
                    kind = e.kind(), "plugin error, delivery held until a new version: {}", crate::text::escape(&e.to_string()));
                let mut u = Update::new(j.seq, State::PluginError);
                u.reason = Some(format!("{}: {e}", e.kind()));
                u.plugin = Some(tag.clone());
                Outcome::Park(u)
            }
        })
        .collect()
}
