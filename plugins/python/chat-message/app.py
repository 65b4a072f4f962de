"""chat-message, in Python: the same behaviour as plugins/chat-message (Rust).

Turns a new_feed_entry into {"text": "New in <feed>: <title> — <description>",
"channel": <config channel>}; skips every other event.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


class Handler(exports.Handler):
    def handle(self, event: types.Event, client: types.Client) -> types.Verdict:
        if not isinstance(event.payload, types.Payload_NewFeedEntry):
            return types.Verdict_Skip(f"{event.name} is not a new_feed_entry")
        entry = event.payload.value
        text = f"New in {entry.feed.title}: {entry.entry.title}"
        if entry.entry.description:
            text += " \u2014 " + entry.entry.description
        message = {"text": text}
        config = dict(client.config)
        if "channel" in config:
            message["channel"] = config["channel"]
        host.log(types.Level.DEBUG, f"chat message for feed {json.dumps(entry.feed.title)}")
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        return types.Verdict_Deliver(types.Delivery(body=body, content_type="application/json", headers=[]))
