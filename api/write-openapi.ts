// `npm run openapi`: regenerates openapi/openapi.json from the routes and schemas.
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';
import { generateOpenApiJson, OPENAPI_FILE } from './openapi-document.ts';

const path = fileURLToPath(OPENAPI_FILE);
await mkdir(dirname(path), { recursive: true });
await writeFile(path, await generateOpenApiJson());
process.stdout.write(`wrote ${path}\n`);
