#!/usr/bin/env node
// `certgate` (package.json `bin`): runs the TypeScript command line (cli/main.ts) through
// tsx, as the API and the worker run, so that a checkout works after `npm ci` with no build.
import process from 'node:process';
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./main.ts');
process.exitCode = await main(process.argv);
