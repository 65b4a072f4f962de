// {{name}}: a hookwasm plugin. It turns each new feed entry into a short JSON
// message and skips every other event; change `handle` to do what your client
// needs. The plugin interface is documented in wit/plugin-0.2.0/plugin.wit.
import { log } from 'hookwasm:plugin/host@0.2.0';

const encoder = new TextEncoder();

export const handler = {
  handle(event, client) {
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
  },
};
