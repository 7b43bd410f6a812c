// `certgate config export | diff | apply`: the configuration kept in a file.
//
// diff and apply send the file to `PUT /v1/config?dryRun=true`: the API validates it (a 400
// names the field), fills in defaults and merges the stored secrets exactly as the import
// would, and answers the result with the version in force. The diff is that result against
// the configuration in force; `apply --yes` then imports the file with `If-Match` on that
// version, so a change made by someone else in between is refused (412), never overwritten.
import { writeFile } from 'node:fs/promises';
import { call, type Connection } from '../api.ts';
import { diffConfigs, renderChanges, type ResourceChange } from '../config-diff.ts';
import { formatConfigFile, readConfigFile, toConfigFile, type Config, type ConfigExport, type Reference } from '../config-file.ts';
import { EXIT, type Output } from '../output.ts';
import { waitForWorkers } from './workers.ts';

export async function configExport(conn: Connection, out: Output, opts: { format: 'yaml' | 'json'; output?: string }): Promise<number> {
  const { data } = await call(conn, 'GET /v1/config', conn.client.GET('/v1/config'));
  const text = formatConfigFile(toConfigFile(data), out.json ? 'json' : opts.format, { url: conn.url, version: data.version });
  if (opts.output) {
    await writeFile(opts.output, text);
    out.progress(`wrote ${opts.output} (configuration version ${data.version})`);
    out.progressDone();
  } else {
    process.stdout.write(text);
  }
  return EXIT.ok;
}

interface Plan {
  current: ConfigExport;
  preview: ConfigExport;
  changes: ResourceChange[];
  references: Reference[];
  /** The file as sent (secrets resolved: never printed). */
  file: Config;
}

async function plan(conn: Connection, out: Output, file: string): Promise<Plan> {
  const { config, references } = await readConfigFile(file);
  out.progress(`checking ${file} with the API`);
  const { data: current } = await call(conn, 'GET /v1/config', conn.client.GET('/v1/config'));
  const { data: preview } = await call(
    conn,
    `${file} (PUT /v1/config?dryRun=true)`,
    conn.client.PUT('/v1/config', {
      params: { query: { dryRun: true } },
      headers: { 'if-match': `"${current.version}"` },
      body: config,
    }),
    { 412: 'the configuration changed while it was read; run the command again' },
  );
  out.progressDone();
  const { version: _a, ...before } = current;
  const { version: _b, ...after } = preview;
  return { current, preview, changes: diffConfigs(before, after), references, file: config };
}

function summary(p: Plan): { changes: ResourceChange[]; secrets: Reference[]; version: number } {
  return { changes: p.changes, secrets: p.references, version: p.current.version };
}

function printPlan(out: Output, p: Plan): void {
  if (p.changes.length === 0) out.line(`No changes: the file matches configuration version ${p.current.version}.`);
  else {
    out.line(`Changes to configuration version ${p.current.version} (+ add, - remove, ~ change):`);
    for (const l of renderChanges(p.changes)) out.line(`  ${l}`);
  }
  if (p.references.length > 0) {
    out.line('Values given by reference (secrets are write-only, so they are sent on apply but never compared):');
    for (const r of p.references) out.line(`  ${r.at}  from ${r.source}`);
  }
}

/** Exit 0: the file matches; 1: it differs (as diff(1)). */
export async function configDiff(conn: Connection, out: Output, file: string): Promise<number> {
  const p = await plan(conn, out, file);
  if (out.json) out.data(summary(p));
  else printPlan(out, p);
  return p.changes.length === 0 ? EXIT.ok : EXIT.notOk;
}

export async function configApply(conn: Connection, out: Output, file: string, opts: { yes: boolean; wait: number }): Promise<number> {
  const p = await plan(conn, out, file);
  // Secrets cannot be compared: a file that carries some is sent even when nothing else changed (a rotated password).
  const needed = p.changes.length > 0 || p.references.length > 0;
  if (!opts.yes || !needed) {
    if (out.json) out.data({ ...summary(p), applied: false });
    else {
      printPlan(out, p);
      if (needed) out.line(`Dry run: nothing was changed. Run again with --yes to apply (only if the configuration is still at version ${p.current.version}).`);
    }
    return EXIT.ok;
  }
  out.progress(`applying ${file} (If-Match: "${p.current.version}")`);
  const { data: written } = await call(
    conn,
    `apply ${file}`,
    conn.client.PUT('/v1/config', { params: { query: { dryRun: false } }, headers: { 'if-match': `"${p.current.version}"` }, body: p.file }),
    { 412: `the configuration changed since version ${p.current.version} (someone else wrote it): nothing was applied; run the command again to see the new diff` },
  );
  const workers = await waitForWorkers(conn, out, written.version, opts.wait);
  if (out.json) out.data({ ...summary(p), applied: true, newVersion: written.version, workers });
  else {
    printPlan(out, p);
    out.line(`Applied: configuration version ${written.version}.`);
    out.line(workers.lagging.length === 0
      ? `${workers.total} worker(s) run version ${written.version}.`
      : `Not confirmed within ${opts.wait} s by: ${workers.lagging.join(', ')} (see certgate workers).`);
  }
  return workers.lagging.length === 0 ? EXIT.ok : EXIT.notOk;
}
