// Builds every plugin folder here (each with a plugin.js) into target/<name>.wasm,
// a component for hookwasm:plugin/plugin@0.2.0 that imports only what hookwasm
// provides (no wasi:http: the `http` and `fetch-event` features are off).
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wit = join(here, '..', '..', 'wit', 'plugin-0.2.0');
const only = process.argv.slice(2);
await mkdir(join(here, 'target'), { recursive: true });

for (const name of await readdir(here)) {
  const source = join(here, name, 'plugin.js');
  if (!(await stat(source).catch(() => null)) || (only.length && !only.includes(name))) continue;
  const { component } = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: 'plugin',
    disableFeatures: ['http', 'fetch-event'],
  });
  const out = join(here, 'target', `${name}.wasm`);
  await writeFile(out + '.tmp', component);
  await rename(out + '.tmp', out);
  console.log(`built ${out} (${component.length} bytes)`);
}
