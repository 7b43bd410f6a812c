// `certgate workers`: the SMTP workers alive (heartbeat within 15 s, SPEC §2.7), and the
// wait for them to apply a configuration version that `config apply` shows as progress.
import { call, type Connection, type Schemas } from '../api.ts';
import { EXIT, relativeTime, table, type Output } from '../output.ts';

/** A heartbeat; `processes`, `listenerErrors` and `configError` may be missing from an older API's. */
type Worker = Omit<Schemas['WorkerStatus'], 'processes' | 'listenerErrors' | 'configError'> & Partial<Pick<Schemas['WorkerStatus'], 'processes' | 'listenerErrors' | 'configError'>>;

export async function listWorkers(conn: Connection): Promise<Worker[]> {
  const { data } = await call(conn, 'GET /v1/workers', conn.client.GET('/v1/workers'));
  return data.items;
}

export function workerProblems(w: Worker): string[] {
  const errors = (w.listenerErrors ?? []).map((e) => `listener ${e.name}: ${e.error}`);
  return w.configError ? [`configuration: ${w.configError}`, ...errors] : errors;
}

export async function workersCommand(conn: Connection, out: Output): Promise<number> {
  const items = await listWorkers(conn);
  const { data: config } = await call(conn, 'GET /v1/config', conn.client.GET('/v1/config'));
  if (out.json) {
    out.data({ version: config.version, items });
  } else if (items.length === 0) {
    out.line('No SMTP worker is running (none sent a heartbeat in the last 15 s).');
  } else {
    out.line(table(items, [
      { header: 'WORKER', value: (w) => w.id },
      { header: 'VERSION', value: (w) => (w.configVersion === config.version ? String(w.configVersion) : `${w.configVersion} (API ${config.version})`) },
      { header: 'LISTENERS', value: (w) => w.listeners.map((l) => `${l.name}@${l.address}:${l.port}`).join(' ') || '-' },
      { header: 'SESSIONS', value: (w) => String(w.sessions) },
      { header: 'PROCESSES', value: (w) => String(w.processes ?? 1) },
      { header: 'CRLS', value: (w) => String(w.crls.length) },
      { header: 'LAST SEEN', value: (w) => relativeTime(w.lastSeen) },
      { header: 'ERRORS', value: (w) => workerProblems(w).join('; ') || '-' },
    ]));
  }
  const bad = items.length === 0 || items.some((w) => w.configVersion !== config.version || workerProblems(w).length > 0);
  return bad ? EXIT.notOk : EXIT.ok;
}

/** Polls until every worker alive runs `version` (or newer), or `seconds` pass. */
export async function waitForWorkers(conn: Connection, out: Output, version: number, seconds: number): Promise<{ total: number; lagging: string[] }> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const items = await listWorkers(conn);
    const lagging = items.filter((w) => w.configVersion < version).map((w) => w.id);
    if (lagging.length === 0 || Date.now() >= deadline) {
      out.progressDone();
      return { total: items.length, lagging };
    }
    out.progress(`waiting for ${lagging.length} of ${items.length} worker(s) to apply version ${version}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
