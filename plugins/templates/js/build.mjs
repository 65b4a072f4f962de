// Builds {{name}}.wasm from plugin.js with componentize-js. Only what hookwasm
// provides is imported: the `http` and `fetch-event` features are off.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: 'wit/plugin-0.2.0',
  worldName: 'plugin',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile('{{name}}.wasm', component);
console.log(`built {{name}}.wasm (${component.length} bytes)`);
