// The configuration store on its own: loading, optimistic transactions and their retry,
// If-Match, validation of the whole result.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { keys } from '../shared/redis/keys.ts';
import { ConfigConflictError, ConfigValidationError, ConfigVersionMismatchError, loadConfig, updateConfig } from '../shared/config/store.ts';
import { DEFAULT_POLICY_LIMITS, EMPTY_CONFIG, type Config, type MailFlowPolicy } from '../shared/config/schemas.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';

const policy = (name: string): MailFlowPolicy => ({
  name,
  action: 'relay',
  tls: 'off',
  verifyClientCertificate: false,
  requireSmtpAuth: false,
  smtpAuthRequiresTls: false,
  maxMessageBytes: 26214400,
  maxRecipients: 100,
  ...DEFAULT_POLICY_LIMITS,
});
/**
 * Blocks the event loop for a moment: a command another client has just written to its
 * socket is then surely executed by Redis before anything this client sends next.
 */
function letOtherClientWin(): void {
  const until = Date.now() + 20;
  while (Date.now() < until);
}
const addPolicy = (name: string) => (c: Config): Config => ({ ...c, mailFlowPolicies: [...c.mailFlowPolicies, policy(name)] });

describe('config store', () => {
  let server: TestRedis;
  let redis: Redis;
  let other: Redis;
  before(async () => {
    server = await startRedis();
    redis = new Redis(server.url);
    other = new Redis(server.url);
  });
  after(async () => {
    redis.disconnect();
    other.disconnect();
    await server.stop();
  });

  test('an empty store loads as version 0 of the empty configuration', async () => {
    assert.deepEqual(await loadConfig(redis), { version: 0, ...EMPTY_CONFIG });
  });

  test('updates bump the version, publish it and store the whole document', async () => {
    const written = await updateConfig(redis, addPolicy('A'));
    assert.equal(written.version, 1);
    assert.deepEqual(await loadConfig(other), written);
    assert.equal(JSON.parse((await redis.get(keys.config)) ?? '{}').version, 1);
  });

  test('a document written without newer defaulted fields loads complete', async () => {
    const stored = JSON.parse((await redis.get(keys.config)) ?? '{}');
    delete stored.crlSettings;
    delete stored.mailFlowPolicies[0].maxRecipients;
    await redis.set(keys.config, JSON.stringify(stored));
    const loaded = await loadConfig(redis);
    assert.equal(loaded.crlSettings.onExpiredCrl, 'reject');
    assert.equal(loaded.mailFlowPolicies[0]?.maxRecipients, 100);
  });

  test('a corrupt stored document is refused with the field named', async () => {
    const good = await redis.get(keys.config);
    await redis.set(keys.config, JSON.stringify({ version: 9, ...EMPTY_CONFIG, mailFlowPolicies: [{ ...policy('B'), action: 'teleport' }] }));
    await assert.rejects(loadConfig(redis), /stored configuration .* is invalid: \/mailFlowPolicies\/B\/action/);
    await redis.set(keys.config, good ?? '');
  });

  test('If-Match: a stale expected version is refused', async () => {
    const { version } = await loadConfig(redis);
    await assert.rejects(updateConfig(redis, addPolicy('C'), { expectedVersion: version - 1 }), ConfigVersionMismatchError);
    assert.equal((await updateConfig(redis, addPolicy('C'), { expectedVersion: version })).version, version + 1);
  });

  test('an invalid result or a refusing change writes nothing', async () => {
    const before = await redis.get(keys.config);
    await assert.rejects(updateConfig(redis, addPolicy('A')), (err: unknown) => {
      assert.ok(err instanceof ConfigValidationError);
      assert.deepEqual(err.issues, [{ field: '/mailFlowPolicies/A/name', message: 'duplicate mail flow policy name "A"' }]);
      return true;
    });
    await assert.rejects(
      updateConfig(redis, () => {
        throw new Error('refused by the caller');
      }),
      /refused by the caller/,
    );
    assert.equal(await redis.get(keys.config), before);
    assert.deepEqual((await updateConfig(redis, addPolicy('D'))).mailFlowPolicies.map((p) => p.name), ['A', 'C', 'D'], 'the connection is usable afterwards');
  });

  test('a write by another process between read and EXEC makes the change run again', async () => {
    const { version } = await loadConfig(redis);
    let runs = 0;
    const written = await updateConfig(redis, (c) => {
      runs++;
      // The first time, another process writes after our WATCH and GET, before our EXEC.
      if (runs === 1) {
        void other.set(keys.config, JSON.stringify({ version: version + 1, ...addPolicy('E')(c) }));
        letOtherClientWin();
      }
      return addPolicy('F')(c);
    });
    assert.equal(runs, 2);
    assert.equal(written.version, version + 2);
    assert.deepEqual(written.mailFlowPolicies.map((p) => p.name).slice(-2), ['E', 'F'], 'both writes landed');
    assert.deepEqual(await loadConfig(redis), written);
  });

  test('a writer that always loses gives up with a conflict', async () => {
    let n = 0;
    await assert.rejects(
      updateConfig(redis, (c) => {
        void other.set(keys.config, JSON.stringify({ ...c, version: 1000 + n++ }));
        letOtherClientWin();
        return c;
      }),
      ConfigConflictError,
    );
  });
});
