// The CLI's API types (cli/api-types.ts) are those openapi-typescript makes from the
// committed openapi/openapi.json (itself checked against the routes by openapi.test.ts):
// a route or schema change without `npm run openapi` fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { CLI_TYPES_FILE, generateCliTypes } from '../cli/types-generate.ts';

test('cli/api-types.ts is up to date with openapi/openapi.json (run `npm run openapi`)', async () => {
  const committed = await readFile(CLI_TYPES_FILE, 'utf8');
  const fresh = await generateCliTypes();
  assert.ok(committed === fresh, 'cli/api-types.ts is stale: run `npm run openapi` and commit both files');
  assert.match(committed, /"\/v1\/ldap-profiles\/\{name\}\/test"/);
  assert.match(committed, /type: "ldap";/, 'discriminator values come from the document\'s mapping');
});
