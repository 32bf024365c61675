// Builds greeting.js into a component with componentize-js (StarlingMonkey). Run by
// ../build-js.sh. Uses the library rather than `jco componentize`: jco 1.35's CLI cannot
// read the WIT file here (see ../README.md, "Other languages").
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, '../dist/js/js_greeting.wasm');

const { component } = await componentize({
  sourcePath: join(here, 'greeting.js'),
  witPath: join(here, '../../../wit/mailing-plugin.wit'),
  worldName: 'personalizer',
  // No WASI at all: no stdio, clocks, randomness or HTTP. The component then imports
  // only mailing:plugin/host and mailing:plugin/types.
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
