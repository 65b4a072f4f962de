"""{{name}}: a hookwasm plugin. It turns each new feed entry into a short JSON
message and skips every other event; change `handle` to do what your client needs.
The plugin interface is documented in wit/plugin-0.2.0/plugin.wit."""

import json

from wit_world import exports
from wit_world.imports import host, types


class Handler(exports.Handler):
    def handle(self, event: types.Event, client: types.Client) -> types.Verdict:
        if not isinstance(event.payload, types.Payload_NewFeedEntry):
            return types.Verdict_Skip(f"{event.name} is not handled yet")
        host.log(types.Level.DEBUG, f"{event.name} for client {client.id}")
        entry = event.payload.value
        message = {"text": f"New in {entry.feed.title}: {entry.entry.title}"}
        channel = dict(client.config).get("channel")
        if channel is not None:
            message["channel"] = channel
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        return types.Verdict_Deliver(types.Delivery(body=body, content_type="application/json", headers=[]))
