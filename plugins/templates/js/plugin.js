// {{name}}: a hookwasm plugin. It turns each new feed entry into a short JSON
// message and skips every other event; change `handle` to do what your client
// needs. The plugin interface is documented in wit/plugin-0.2.0/plugin.wit.
import { log } from 'hookwasm:plugin/host@0.2.0';

const encoder = new TextEncoder();

// Returns a verdict: {tag: 'deliver', val: {...}} or {tag: 'skip', val: reason}.
// For an error, throw {tag: 'invalid-event' | 'invalid-config' | 'failed', val: message}.
function handle(event, client) {
  if (event.payload.tag !== 'new-feed-entry') {
    return { tag: 'skip', val: `${event.name} is not handled yet` };
  }
  log('debug', `${event.name} for client ${client.id}`);
  const entry = event.payload.val;
  const message = { text: `New in ${entry.feed.title}: ${entry.entry.title}` };
  const channel = client.config.find(([key]) => key === 'channel');
  if (channel) message.channel = channel[1];
  return {
    tag: 'deliver',
    val: { body: encoder.encode(JSON.stringify(message)), contentType: 'application/json', headers: [] },
  };
}

export const handler = {
  handle(event, client) {
    try {
      return handle(event, client);
    } catch (e) {
      throw typedError(e);
    }
  },
};

// Any other exception (a bug, a `throw new Error(…)`) becomes a `failed` error
// that carries its message: thrown as is, it would end the call in a trap whose
// reason says little more than "the plugin aborted".
function typedError(e) {
  const tags = ['invalid-event', 'invalid-config', 'failed'];
  if (e && typeof e === 'object' && tags.includes(e.tag)) return e;
  return { tag: 'failed', val: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
}
