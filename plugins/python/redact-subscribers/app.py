"""redact-subscribers, in Python: the same behaviour as plugins/redact-subscribers.

Config `mode`: "mask" (default) turns bradley72@yahoo.com into b********@yahoo.com;
"remove" takes the address out. Both formats (`email`, `mail`); other events pass.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types


def mask(address: str) -> str:
    local, at, domain = address.partition("@")
    if not at:
        return "*" * max(len(address), 1)
    return local[:1] + "*" * max(len(local) - 1, 1) + "@" + domain


class Handler(exports.Handler):
    def handle(self, event: types.Event, client: types.Client) -> types.Verdict:
        if not isinstance(event.payload, types.Payload_NewFeedEntry):
            return types.Verdict_Deliver(types.Delivery(body=event.json.encode(), content_type=None, headers=[]))
        mode = dict(client.config).get("mode", "mask")
        if mode not in ("mask", "remove"):
            raise Err(types.Error_InvalidConfig(f'mode must be "mask" or "remove", not {json.dumps(mode)}'))
        doc = json.loads(event.json)
        for user in doc.get("users") or []:
            if not isinstance(user, dict):
                continue
            for key in ("email", "mail"):
                if key not in user:
                    continue
                if mode == "remove":
                    del user[key]
                elif isinstance(user[key], str):
                    user[key] = mask(user[key])
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return types.Verdict_Deliver(types.Delivery(body=body, content_type="application/json", headers=[]))
