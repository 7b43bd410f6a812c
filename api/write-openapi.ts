// `npm run openapi`: regenerates openapi/openapi.json from the routes and schemas, then the
// CLI's API types (cli/api-types.ts) from that document.
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';
import { generateOpenApiJson, OPENAPI_FILE } from './openapi-document.ts';
import { CLI_TYPES_FILE, generateCliTypes } from '../cli/types-generate.ts';

const path = fileURLToPath(OPENAPI_FILE);
await mkdir(dirname(path), { recursive: true });
await writeFile(path, await generateOpenApiJson());
process.stdout.write(`wrote ${path}\n`);
await writeFile(CLI_TYPES_FILE, await generateCliTypes());
process.stdout.write(`wrote ${fileURLToPath(CLI_TYPES_FILE)}\n`);
