// SPEC §1 "One worker, all cores" and "Worker health": WORKER_PROCESSES=2 runs two serving
// processes on one listener port, each following the configuration; GET /v1/workers lists
// the worker once with `processes`; the metrics port answers for both; a listener that
// cannot be bound is reported (log, listenerErrors, /health) and bound once it can be; a
// process that dies is replaced; SIGTERM drains them all. Plus the pure parts: what `auto`
// means, readiness and the merged heartbeat.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { autoProcesses, cgroupCpuMax, parseProcesses } from '../worker/cpus.ts';
import { combineStatus, readiness } from '../worker/health.ts';
import type { ProcessReport } from '../worker/engine.ts';
import { startSystem, type System, type Worker } from './helpers/system.ts';
import { python, swaks } from './helpers/smtp-clients.ts';
import { greeting } from './helpers/smtp-probe.ts';
import { freePort } from './helpers/ports.ts';
import { eventually } from './helpers/wait.ts';
import { listener } from './fixtures/deployments.ts';

describe('WORKER_PROCESSES=auto', () => {
  test('the CPUs available, capped by the cgroup quota rounded down, at least 1', () => {
    assert.equal(autoProcesses(8, null), 8);
    assert.equal(autoProcesses(8, 'max 100000'), 8);
    assert.equal(autoProcesses(8, '200000 100000'), 2);
    assert.equal(autoProcesses(8, '150000 100000'), 1);
    assert.equal(autoProcesses(8, '50000 100000'), 1);
    assert.equal(autoProcesses(2, '800000 100000'), 2);
    assert.equal(autoProcesses(4, 'garbage'), 4);
  });
  test('cgroup v2 cpu.max, else v1 cfs files, else none', () => {
    const files = (m: Record<string, string>) => (p: string) => {
      if (!(p in m)) throw new Error('ENOENT');
      return m[p];
    };
    assert.equal(cgroupCpuMax(files({ '/sys/fs/cgroup/cpu.max': '150000 100000\n' })), '150000 100000');
    assert.equal(cgroupCpuMax(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '300000\n', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n' })), '300000 100000');
    assert.equal(cgroupCpuMax(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1\n', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n' })), null);
    assert.equal(cgroupCpuMax(files({})), null);
  });
  test('the variable', () => {
    assert.equal(parseProcesses(undefined), 1);
    assert.equal(parseProcesses(''), 1);
    assert.equal(parseProcesses('3'), 3);
    assert.ok(parseProcesses('auto')! >= 1);
    for (const bad of ['0', '257', '-1', '1.5', 'all', ' 2']) assert.equal(parseProcesses(bad), null, bad);
  });
});

describe('readiness and the merged heartbeat', () => {
  const report = (o: Partial<ProcessReport> = {}): ProcessReport => ({
    listeners: [{ name: 'mx', address: '127.0.0.1', port: 25 }], listenerErrors: [], configVersion: 7, sessions: 1,
    crls: [{ source: 'a', issuer: 'CN=A', crlNumber: '5', revokedCount: 3 }], configError: null, applied: true, configAgeSeconds: 1, stale: false, ...o,
  });
  test('ready only when every process runs, applied a configuration, binds every listener and is not stale', () => {
    assert.deepEqual(readiness([report(), report()], false), { ready: true });
    const r = readiness([report(), null], false);
    assert.deepEqual(r, { ready: false, reasons: ['process 2 of 2 is not running'] });
    assert.deepEqual(readiness([null], false), { ready: false, reasons: ['the worker process is not running'] });
    const bad = readiness([report({ applied: false, stale: true, configAgeSeconds: 12.4, listenerErrors: [{ name: 'mx', address: '127.0.0.1', port: 25, error: 'listen EADDRINUSE' }] })], true);
    assert.equal(bad.ready, false);
    assert.deepEqual(!bad.ready && bad.reasons, [
      'draining: the worker is stopping', 'no configuration applied yet', 'listener "mx" (127.0.0.1:25) is not bound: listen EADDRINUSE',
      'configuration not confirmed by Redis for 12 s (WORKER_MAX_STALE_SECONDS): new connections get 421',
    ]);
    assert.deepEqual(readiness([report({ configError: 'empty store' })], false), { ready: true }, 'a refused store is reported, not a reason to stop serving');
  });
  test('one entry for all processes: lowest version, sessions added, CRLs all hold, errors once', () => {
    const err = { name: 'x', address: '127.0.0.1', port: 26, error: 'EACCES' };
    const s = combineStatus('w1', [
      report({ configVersion: 7, sessions: 2, listenerErrors: [err] }),
      report({ configVersion: 6, sessions: 3, listenerErrors: [err], configError: 'older', crls: [{ source: 'a', issuer: 'CN=A', crlNumber: '4', revokedCount: 2 }] }),
    ], new Date('2030-01-01T00:00:00Z'));
    assert.deepEqual(s, {
      id: 'w1', listeners: [{ name: 'mx', address: '127.0.0.1', port: 25 }], configVersion: 6, crls: [], sessions: 5,
      lastSeen: '2030-01-01T00:00:00.000Z', processes: 2, listenerErrors: [err], configError: 'older',
    });
  });
});

describe('a worker with WORKER_PROCESSES=2', () => {
  let sys: System;
  let worker: Worker;
  let port: number;
  const id = () => `test-worker-${worker.offset}`;
  const metricsUrl = () => `http://127.0.0.1:${worker.metricsPort}`;
  const health = async () => {
    const res = await fetch(`${metricsUrl()}/health`);
    return { status: res.status, body: (await res.json()) as { status: string; reasons?: string[] } };
  };
  const metricsText = async () => (await fetch(`${metricsUrl()}/metrics`)).text();
  const metric = async (line: RegExp): Promise<number> => {
    const found = (await metricsText()).split('\n').find((l) => line.test(l));
    return found ? Number(found.split(' ').at(-1)) : NaN;
  };
  /** The serving processes' pids by slot, from their start-up log lines. */
  const processPids = (): Map<number, number> => {
    const pids = new Map<number, number>();
    for (const l of worker.output().split('\n')) {
      if (!l.includes('worker process started')) continue;
      const { pid, process: slot } = JSON.parse(l) as { pid: number; process: number };
      pids.set(slot, pid);
    }
    return pids;
  };
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const relay = async (): Promise<boolean> => {
    const r = await swaks(['--server', `127.0.0.1:${port}`, '--from', 'a@example.com', '--to', 'b@example.com']);
    return r.replies.some((x) => x.code === 250 && /relayed/.test(x.text));
  };

  before(async () => {
    sys = await startSystem({ workers: 0 });
    worker = await sys.startWorker({ WORKER_PROCESSES: '2' });
    await sys.api.ok('POST', '/v1/mail-flow-policies', { name: 'OPEN', action: 'relay', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false });
    port = await freePort();
    await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' }));
    await sys.settled(20_000);
    await eventually(() => processPids().size === 2, 20_000, 'two serving processes');
  });
  after(async () => {
    await sys?.stop();
  });

  test('GET /v1/workers lists it once, with processes: 2; /health is 200', async () => {
    type Entry = { id: string; processes: number; listeners: unknown[]; listenerErrors: unknown[]; configError: string | null };
    // The heartbeat counts the processes that reported: the second may report a moment after it logged its start.
    const items = await eventually(async () => {
      const { items } = await sys.api.ok<{ items: Entry[] }>('GET', '/v1/workers');
      return items[0]?.processes === 2 && items;
    }, 10_000, 'a heartbeat from both processes');
    assert.equal(items.length, 1);
    assert.equal(items[0].id, id());
    assert.equal(items[0].processes, 2);
    assert.deepEqual(items[0].listeners, [{ name: 'mx', address: '127.0.0.1', port }]);
    assert.deepEqual(items[0].listenerErrors, []);
    assert.equal(items[0].configError, null);
    assert.deepEqual(await health(), { status: 200, body: { status: 'ok' } });
  });

  test('the metrics port answers for both processes: sessions add up, the version is the lowest applied', async () => {
    const before = (await metric(/^certgate_smtp_sessions_total\{listener="mx"\}/)) || 0;
    for (let i = 0; i < 6; i++) assert.ok(await relay());
    await eventually(async () => (await metric(/^certgate_smtp_sessions_total\{listener="mx"\}/)) === before + 6, 10_000, 'six more sessions counted');
    const { version } = await sys.api.ok<{ version: number }>('GET', '/v1/config');
    await sys.api.ok('POST', '/v1/mail-flow-policies', { name: 'SPARE', action: 'relay' });
    // certgate_config_version merges by minimum: it reaches the new version only when both processes applied it.
    await eventually(async () => (await metric(/^certgate_config_version /)) === version + 1, 10_000, 'both processes at the new version');
    assert.match(await metricsText(), /^process_resident_memory_bytes /m);
  });

  test('a process killed is replaced; the other keeps serving the shared port meanwhile', async () => {
    const pids = processPids();
    const victim = pids.get(1)!;
    process.kill(victim, 'SIGKILL');
    await eventually(() => !alive(victim), 5000, 'the process to die');
    assert.ok(await relay(), 'the other process serves the port');
    await eventually(() => processPids().get(1) !== victim, 20_000, 'a new process 1');
    await eventually(async () => (await health()).status === 200, 20_000, '/health 200 again');
    assert.equal(worker.child.exitCode, null, 'the worker itself did not restart');
    assert.match(worker.output(), /"process":1[^\n]*worker process exited; starting another|worker process exited; starting another[^\n]*"process":1/);
  });

  test('a listener on a port in use: logged, in listenerErrors and /health, bound once the port is free', async () => {
    const busy = await freePort();
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(busy, '127.0.0.1', resolve));
    let blocked = true;
    try {
      await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'busy', port: busy, authProfile: null, tls: null, policy: 'OPEN' }));
      const entry = await eventually(async () => {
        const { items } = await sys.api.ok<{ items: Array<{ listenerErrors: Array<{ name: string; port: number; error: string }> }> }>('GET', '/v1/workers');
        return items[0]?.listenerErrors.find((e) => e.name === 'busy');
      }, 15_000, 'listenerErrors');
      assert.equal(entry.port, busy);
      assert.match(entry.error, /EADDRINUSE/);
      const h = await health();
      assert.equal(h.status, 503);
      assert.equal(h.body.status, 'unready');
      assert.ok(h.body.reasons?.some((r) => r.startsWith(`listener "busy" (127.0.0.1:${busy}) is not bound:`) && /EADDRINUSE/.test(r)), JSON.stringify(h.body));
      assert.match(worker.output(), /"msg":"cannot bind listener; retrying every 5 s"/);
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      blocked = false;
      await eventually(async () => (await greeting(busy, 3000))?.code === 220, 30_000, 'the listener bound once the port is free');
      await eventually(async () => (await health()).status === 200, 15_000, '/health 200');
      await eventually(async () => {
        const { items } = await sys.api.ok<{ items: Array<{ listenerErrors: unknown[] }> }>('GET', '/v1/workers');
        return items[0]?.listenerErrors.length === 0;
      }, 10_000, 'listenerErrors empty in the next heartbeat');
    } finally {
      if (blocked) blocker.close();
      await sys.api.call('DELETE', '/v1/listeners/busy');
    }
  });

  test('SIGTERM drains every process: a session in flight finishes, the worker exits 0, no process is left', async () => {
    const pids = [...processPids().values()];
    const inFlight = python<number>(
      'import smtplib,sys,time,json; s=smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.ehlo("c.example"); time.sleep(1.5); s.sendmail("a@example.com", ["b@example.com"], b"Subject: drain\\r\\n\\r\\nx\\r\\n"); s.quit(); print(json.dumps(250))',
      [String(port)],
    );
    await eventually(async () => (await metric(/^certgate_smtp_sessions_active /)) >= 1, 10_000, 'the session to be open');
    const exited = new Promise<number | null>((r) => worker.child.once('exit', (code) => r(code)));
    worker.child.kill('SIGTERM');
    await eventually(async () => (await health().catch(() => ({ status: 0 }))).status !== 200, 5000, '/health to stop saying ok');
    assert.equal(await inFlight, 250);
    assert.equal(await exited, 0);
    for (const pid of pids) await eventually(() => !alive(pid), 5000, `process ${pid} to be gone`);
    sys.workers.splice(sys.workers.indexOf(worker), 1);
    assert.equal(await greeting(port, 2000), null, 'nothing listens any more');
    await eventually(async () => (await sys.api.ok<{ items: unknown[] }>('GET', '/v1/workers')).items.length === 0, 5000, 'the heartbeat entry removed');
  });
});
