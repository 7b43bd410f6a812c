// The CRL scheduler (api/crl-scheduler.ts): BullMQ job schedulers follow the configuration
// (SPEC §2.6), their jobs download the sources, and deleted sources lose their CRL.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { CrlSourceNotFoundError, connectCrlRefreshClient, startCrlScheduler, type CrlScheduler, type DownloadJobData } from '../api/crl-scheduler.ts';
import { updateConfig } from '../shared/config/store.ts';
import { readCrlStatus } from '../shared/pki/crl/stored.ts';
import { CRL_QUEUE, keys } from '../shared/redis/keys.ts';
import type { CrlSource } from '../shared/config/schemas.ts';
import { startCrlServer, testLogger, type CrlServer } from './helpers/crl-server.ts';
import { eventually } from './helpers/wait.ts';
import { createPki, type Pki } from './helpers/pki.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { processRedis } from './helpers/follow.ts';
import { redisConnector } from '../shared/redis/connection.ts';
import type { ProcessRedis } from '../shared/process/kit.ts';

let redisServer: TestRedis;
let redis: Redis;
let admin: Redis;
let queueConn: Redis;
let queue: Queue<DownloadJobData>;
let pki: Pki;
let web: CrlServer;
let scheduler: CrlScheduler;
let shared: ProcessRedis;

function source(name: string, extra: Partial<CrlSource> = {}): CrlSource {
  return { name, fileType: 'asn1', primaryUrl: web.url(`/${name}.crl`), secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true, ...extra };
}

async function configure(...sources: CrlSource[]): Promise<void> {
  const names = new Set(sources.map((s) => s.name));
  await updateConfig(admin, (c) => ({ ...c, crlSources: [...c.crlSources.filter((s) => !names.has(s.name)), ...sources] }));
}

const schedulerOf = async (name: string) => queue.getJobScheduler(`crl:${name}`);
const downloaded = (name: string, timeoutMs = 5000) =>
  eventually(async () => (await readCrlStatus(redis, name)).lastSuccessAt !== null, timeoutMs, `a download of "${name}"`);
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  [redisServer, pki, web] = await Promise.all([startRedis(), createPki(), startCrlServer()]);
  redis = new Redis(redisServer.url);
  admin = new Redis(redisServer.url);
  queueConn = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  queue = new Queue<DownloadJobData>(CRL_QUEUE, { connection: queueConn });
  // The CAs trusted to sign CRLs come from the configuration.
  await updateConfig(admin, (c) => ({ ...c, crlSettings: { ...c.crlSettings, trustedCaPem: pki.root.certPem + pki.intermediate.certPem } }));
  shared = await processRedis(redisServer.url);
  scheduler = await startCrlScheduler({ ...shared, logger: testLogger(), fileRoot: null });
});

after(async () => {
  await scheduler?.stop();
  await shared?.close();
  await queue?.close();
  for (const c of [redis, admin, queueConn]) c?.disconnect();
  await Promise.all([web?.close(), redisServer?.stop(), pki?.cleanup()]);
});

describe('CRL scheduler', () => {
  test('an enabled source gets a job scheduler and is downloaded at once', async () => {
    web.serve('/a.crl', await pki.crl('intermediate', []));
    await configure(source('a'));
    const s = await eventually(() => schedulerOf('a'), 20_000, 'the job scheduler');
    assert.equal(s.every, 3_600_000);
    assert.equal(s.pattern, undefined);
    assert.equal(s.name, 'download');
    assert.deepEqual(s.template?.data, { source: 'a' });
    await downloaded('a');
    assert.equal(web.hits('/a.crl'), 1);
    // Its next run is one interval away.
    assert.ok(s.next !== undefined && Math.abs(s.next - (Date.now() + 3_600_000)) < 60_000);
  });

  test("the scheduler's own job runs the download", async () => {
    const job = await eventually(async () => (await queue.getDelayed()).find((j) => j.repeatJobKey === 'crl:a'), 20_000, 'the delayed job');
    const before = (await readCrlStatus(redis, 'a')).lastAttemptAt;
    await job.promote();
    await eventually(async () => (await readCrlStatus(redis, 'a')).lastAttemptAt !== before, 20_000, 'the promoted job to run');
    assert.equal(web.hits('/a.crl'), 2);
    assert.equal((await readCrlStatus(redis, 'a')).lastError, null);
  });

  test('an unrelated configuration write reschedules and downloads nothing', async () => {
    const next = (await schedulerOf('a'))?.next;
    const hits = web.hits('/a.crl');
    await updateConfig(admin, (c) => ({ ...c, crlSettings: { ...c.crlSettings, onExpiredCrl: 'accept-and-log' } }));
    await scheduler.sync();
    await pause(300);
    assert.equal((await schedulerOf('a'))?.next, next);
    assert.equal(web.hits('/a.crl'), hits);
  });

  test('cron sources use pattern (UTC), and are downloaded at once too', async () => {
    web.serve('/c.crl', await pki.crl('intermediate', []));
    await configure(source('c', { schedule: { cron: '0 */6 * * *' } }));
    const s = await eventually(() => schedulerOf('c'), 20_000, 'the cron job scheduler');
    assert.equal(s.pattern, '0 */6 * * *');
    assert.equal(s.every, undefined);
    assert.equal(s.tz, 'UTC');
    await downloaded('c');
  });

  test('a schedule change updates the job scheduler', async () => {
    await configure(source('c', { schedule: { everySeconds: 7200 } }));
    await eventually(async () => (await schedulerOf('c'))?.every === 7_200_000, 20_000, 'the new interval');
    assert.equal((await schedulerOf('c'))?.pattern, undefined);
  });

  test("changing a source's URL downloads it at once", async () => {
    web.serve('/a-moved.crl', await pki.crl('intermediate', []));
    await configure(source('a', { primaryUrl: web.url('/a-moved.crl') }));
    await eventually(async () => (await readCrlStatus(redis, 'a')).url === web.url('/a-moved.crl'), 20_000, 'the download from the new URL');
    assert.equal(web.hits('/a-moved.crl'), 1);
  });

  test('refresh(name) downloads now and answers the status; an unknown source is an error', async () => {
    const hits = web.hits('/a-moved.crl');
    const status = await scheduler.refresh('a');
    assert.equal(status.lastError, null);
    assert.equal(status.url, web.url('/a-moved.crl'));
    assert.equal(web.hits('/a-moved.crl'), hits + 1);
    await assert.rejects(scheduler.refresh('nope'), CrlSourceNotFoundError);
  });

  test('an API with SCHEDULER=off refreshes through the queue, disabled sources too', async () => {
    const client = await connectCrlRefreshClient({ connector: shared.connector });
    try {
      const hits = web.hits('/a-moved.crl');
      const status = await client.refresh('a');
      assert.equal(status.lastError, null);
      assert.equal(web.hits('/a-moved.crl'), hits + 1);
      await assert.rejects(client.refresh('nope'), CrlSourceNotFoundError);
      web.serve('/off.crl', await pki.crl('intermediate', []));
      await configure(source('off', { enabled: false }));
      assert.equal((await client.refresh('off')).url, web.url('/off.crl'));
    } finally {
      await client.close();
    }
  });

  test('without a scheduler process, a queued refresh times out with a clear error', async () => {
    const lonely = await startRedis();
    const client = await connectCrlRefreshClient({ connector: redisConnector(lonely.url, testLogger()), timeoutMs: 300 });
    try {
      await assert.rejects(client.refresh('a'), /no CRL scheduler finished the refresh within 0\.3 s/);
    } finally {
      await client.close();
      await lonely.stop();
    }
  });

  test('disabling removes the job scheduler and keeps the CRL; enabling brings both back', async () => {
    const a = source('a', { primaryUrl: web.url('/a-moved.crl') });
    await configure({ ...a, enabled: false });
    await eventually(async () => (await schedulerOf('a')) === undefined, 20_000, 'the scheduler to go');
    assert.equal(await redis.exists(keys.crlData('a')), 1);
    const hits = web.hits('/a-moved.crl');
    await configure(a);
    await eventually(() => schedulerOf('a'), 20_000, 'the scheduler to come back');
    await eventually(() => web.hits('/a-moved.crl') === hits + 1, 20_000, 'a download on re-enabling');
  });

  test('deleting a source removes its job scheduler, its CRL and its status', async () => {
    await updateConfig(admin, (c) => ({ ...c, crlSources: c.crlSources.filter((s) => s.name !== 'c') }));
    await eventually(async () => (await schedulerOf('c')) === undefined, 20_000, 'the scheduler to go');
    await eventually(async () => (await redis.exists(keys.crlData('c'), keys.crlStatus('c'))) === 0, 20_000, 'the data to go');
    assert.ok(await schedulerOf('a'), 'the other source keeps its scheduler');
  });

  test('a queued job of a source deleted meanwhile does nothing', async () => {
    const job = await queue.add('download', { source: 'ghost' });
    const done = await eventually(async () => {
      const j = await queue.getJob(job.id as string);
      return j?.finishedOn ? j : null;
    }, 5000, 'the job to finish');
    assert.equal(done.returnvalue, null);
    assert.equal(await redis.exists(keys.crlStatus('ghost')), 0);
  });

  test('two schedulers side by side (two API processes) download a new source once', async () => {
    const secondShared = await processRedis(redisServer.url);
    const second = await startCrlScheduler({ ...secondShared, logger: testLogger(), fileRoot: null });
    try {
      web.serve('/d.crl', await pki.crl('intermediate', []), { delayMs: 200 });
      await configure(source('d'));
      await downloaded('d');
      await pause(1000);
      assert.equal(web.hits('/d.crl'), 1);
      assert.equal((await queue.getJobSchedulers()).filter((s) => s.key === 'crl:d').length, 1);
    } finally {
      await second.stop();
      await secondShared.close();
    }
  });
});

describe('npm run start:scheduler (api/scheduler-main.ts)', () => {
  /** Runs the entry point; `whenStarted` runs once it logged its start (then it is sent SIGTERM). */
  async function runMain(env: Record<string, string>, whenStarted?: () => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'api/scheduler-main.ts'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (whenStarted && stdout.includes('CRL scheduler started')) {
        whenStarted();
        child.kill('SIGTERM');
        whenStarted = undefined;
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const [code] = (await once(child, 'exit')) as [number | null];
    return { code, stdout, stderr };
  }

  test('bad environment: non-zero exit with a one-line reason', async () => {
    const bad = await runMain({ REDIS_URL: 'http://nope' });
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr, 'certgate scheduler: REDIS_URL must be a redis:// or rediss:// URL, not "http://nope"\n');
    const noRoot = await runMain({ REDIS_URL: redisServer.url, CRL_FILE_ROOT: '/nonexistent/crls' });
    assert.equal(noRoot.code, 1);
    assert.match(noRoot.stderr, /^certgate scheduler: CRL_FILE_ROOT "\/nonexistent\/crls" is not accessible: ENOENT[^\n]*\n$/);
  });

  test('JSON log lines; SIGTERM stops it cleanly', async () => {
    let started = false;
    const run = await runMain({ REDIS_URL: redisServer.url }, () => (started = true));
    assert.ok(started);
    assert.equal(run.code, 0);
    const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { msg: string });
    assert.ok(lines.some((l) => l.msg === 'draining'), run.stdout);
  });
});
