// chat-message, in JavaScript: the same behaviour as plugins/chat-message (Rust).
// Turns a new_feed_entry into {"text": "New in <feed>: <title> — <description>",
// "channel": <config channel>}; skips every other event.
import { log } from 'hookwasm:plugin/host@0.2.0';

const encoder = new TextEncoder();

export const handler = {
  handle(event, client) {
    if (event.payload.tag !== 'new-feed-entry') {
      return { tag: 'skip', val: `${event.name} is not a new_feed_entry` };
    }
    const entry = event.payload.val;
    let text = `New in ${entry.feed.title}: ${entry.entry.title}`;
    if (entry.entry.description) {
      text += ' \u2014 ' + entry.entry.description;
    }
    const message = { text };
    const channel = client.config.find(([k]) => k === 'channel');
    if (channel) {
      message.channel = channel[1];
    }
    log('debug', `chat message for feed ${JSON.stringify(entry.feed.title)}`);
    return {
      tag: 'deliver',
      val: { body: encoder.encode(JSON.stringify(message)), contentType: 'application/json', headers: [] },
    };
  },
};
