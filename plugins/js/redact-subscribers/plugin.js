// redact-subscribers, in JavaScript: the same behaviour as plugins/redact-subscribers.
// Config `mode`: "mask" (default) turns bradley72@yahoo.com into b********@yahoo.com;
// "remove" takes the address out. Both formats (`email`, `mail`); other events pass.
const encoder = new TextEncoder();

function mask(address) {
  const at = address.indexOf('@');
  if (at < 0) {
    return '*'.repeat(Math.max([...address].length, 1));
  }
  const local = [...address.slice(0, at)];
  return (local[0] ?? '') + '*'.repeat(Math.max(local.length - 1, 1)) + address.slice(at);
}

export const handler = {
  handle(event, client) {
    if (event.payload.tag !== 'new-feed-entry') {
      return { tag: 'deliver', val: { body: encoder.encode(event.json), contentType: undefined, headers: [] } };
    }
    const mode = (client.config.find(([k]) => k === 'mode') ?? [null, 'mask'])[1];
    if (mode !== 'mask' && mode !== 'remove') {
      throw { tag: 'invalid-config', val: `mode must be "mask" or "remove", not ${JSON.stringify(mode)}` };
    }
    const doc = JSON.parse(event.json);
    for (const user of Array.isArray(doc.users) ? doc.users : []) {
      if (user === null || typeof user !== 'object') continue;
      for (const key of ['email', 'mail']) {
        if (!(key in user)) continue;
        if (mode === 'remove') delete user[key];
        else if (typeof user[key] === 'string') user[key] = mask(user[key]);
      }
    }
    return { tag: 'deliver', val: { body: encoder.encode(JSON.stringify(doc)), contentType: 'application/json', headers: [] } };
  },
};
