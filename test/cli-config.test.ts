// The pure parts of the CLI's configuration as code and freshness rules: references to
// secrets, the export as a file, the diff, and CRL health (no API needed).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { diffConfigs, renderChanges, show } from '../cli/config-diff.ts';
import { formatConfigFile, readConfigFile, toConfigFile, type Config, type ConfigExport } from '../cli/config-file.ts';
import { crlHealth } from '../cli/crl-health.ts';
import { parseSince } from '../cli/commands/events.ts';
import { CliError } from '../cli/output.ts';

const empty = (): Config => ({ ldapProfiles: [], smtpAuthProfiles: [], mailFlowPolicies: [], listeners: [], crlSources: [], crlSettings: { inboundSmtpTls: true, outboundSmtpTls: false, webInterface: false, trustedCaPem: null, onExpiredCrl: 'reject' }, ocspSettings: {} as Config['ocspSettings'] });
const policy = (name: string, extra: Record<string, unknown> = {}) => ({ name, action: 'relay', tls: 'required', ...extra }) as unknown as Config['mailFlowPolicies'][number];

describe('configuration file', () => {
  test('$env and $file references resolve; one-line files lose their line end, PEM files keep theirs', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-cli-unit-'));
    try {
      await writeFile(path.join(dir, 'pw.txt'), 's3cret\n');
      await writeFile(path.join(dir, 'cert.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
      await writeFile(path.join(dir, 'c.yaml'), [
        'version: 7',
        'ldapProfiles:',
        '  - name: corp',
        '    bind: { dn: cn=admin, password: { $env: PW } }',
        '    caPem: { $file: cert.pem }',
        '  - name: other',
        '    bind: { dn: cn=x, password: { $file: pw.txt } }',
      ].join('\n'));
      const { config, references } = await readConfigFile(path.join(dir, 'c.yaml'), { PW: 'from-env' });
      const [corp, other] = config.ldapProfiles as unknown as Array<{ bind: { password: string }; caPem?: string }>;
      assert.equal(corp?.bind.password, 'from-env');
      assert.equal(corp?.caPem, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
      assert.equal(other?.bind.password, 's3cret');
      assert.equal('version' in config, false, 'an exported version is dropped');
      assert.deepEqual(references, [
        { at: 'ldapProfiles/corp/bind/password', source: '$env PW' },
        { at: 'ldapProfiles/corp/caPem', source: '$file cert.pem' },
        { at: 'ldapProfiles/other/bind/password', source: '$file pw.txt' },
      ]);
      await assert.rejects(readConfigFile(path.join(dir, 'c.yaml'), {}), (e: CliError) => e.exitCode === 2 && /PW is not set/.test(e.message));
      await writeFile(path.join(dir, 'bad.yaml'), 'listeners: [ { tls: { $env: A, $file: b } } ]');
      await assert.rejects(readConfigFile(path.join(dir, 'bad.yaml'), {}), /a reference is \{ \$env: NAME \} or \{ \$file: PATH \}/);
      await writeFile(path.join(dir, 'list.yaml'), '- a\n- b\n');
      await assert.rejects(readConfigFile(path.join(dir, 'list.yaml')), /must be an object/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('an export becomes a file without version and read-only secret flags', () => {
    const exported = { version: 3, ...empty(), ldapProfiles: [{ name: 'corp', bind: { dn: 'cn=a', passwordSet: true } }] } as unknown as ConfigExport;
    const file = toConfigFile(exported);
    assert.deepEqual((file.ldapProfiles[0] as unknown as { bind: unknown }).bind, { dn: 'cn=a' });
    assert.equal((exported.ldapProfiles[0] as unknown as { bind: { passwordSet: boolean } }).bind.passwordSet, true, 'the export itself is not changed');
    const yaml = formatConfigFile(file, 'yaml', { url: 'http://x', version: 3 });
    assert.match(yaml, /^# certgate configuration exported from http:\/\/x at version 3\./);
    assert.equal(JSON.parse(formatConfigFile(file, 'json', { url: 'http://x', version: 3 })).ldapProfiles[0].name, 'corp');
  });
});

describe('configuration diff', () => {
  test('added, removed and changed resources by name; collection order and key order are no change', () => {
    const a = { ...empty(), mailFlowPolicies: [policy('A', { maxRecipients: 10 }), policy('B'), policy('C')] };
    const b = { ...empty(), mailFlowPolicies: [policy('C'), { tls: 'required', action: 'relay', name: 'A', maxRecipients: 20 } as never, policy('D')] };
    const changes = diffConfigs(a, b);
    assert.deepEqual(changes.map((c) => [c.action, c.name]), [['remove', 'B'], ['change', 'A'], ['add', 'D']]);
    assert.deepEqual(changes.find((c) => c.name === 'A')?.fields, [{ field: 'maxRecipients', before: 10, after: 20 }]);
    assert.deepEqual(diffConfigs(a, { ...a, mailFlowPolicies: [...a.mailFlowPolicies].reverse() }), []);
    assert.deepEqual(renderChanges(changes), ['- mail flow policy B', '~ mail flow policy A', '    maxRecipients: 10 → 20', '+ mail flow policy D', '    action: "relay"', '    tls: "required"']);
  });

  test('nested fields and the settings singletons; order inside a resource counts (sender groups)', () => {
    const l = (groups: string[], port: number) => ({ name: 'smtp', nextHop: { host: 'h', port }, senderGroups: groups.map((name) => ({ name })) }) as never;
    const a = { ...empty(), listeners: [l(['X', 'Y'], 25)] };
    const b = { ...empty(), listeners: [l(['Y', 'X'], 2525)], crlSettings: { ...empty().crlSettings, onExpiredCrl: 'accept-and-log' as const }, ocspSettings: { timeoutMs: 10 } as never };
    const changes = diffConfigs(a, b);
    assert.deepEqual(changes.map((c) => [c.collection, c.name, c.fields.map((f) => f.field)]), [
      ['listeners', 'smtp', ['nextHop/port', 'senderGroups']], ['crlSettings', null, ['onExpiredCrl']], ['ocspSettings', null, ['timeoutMs']],
    ]);
    assert.deepEqual(renderChanges(changes).slice(-2), ['~ OCSP settings', '    timeoutMs: (unset) → 10']);
  });

  test('long and multi-line values are shown by size and digest, never in full', () => {
    const pem = `-----BEGIN CERTIFICATE-----\n${'A'.repeat(900)}\n-----END CERTIFICATE-----\n`;
    assert.match(show(pem), /^<PEM certificate, \d+ chars, sha256 [0-9a-f]{12}>$/);
    assert.match(show({ caPem: pem }), /^\{"caPem":"<PEM certificate/);
    assert.equal(show('short'), '"short"');
    assert.equal(show(undefined), '(unset)');
  });
});

describe('CRL health', () => {
  const now = new Date('2026-06-01T12:00:00Z');
  const source = (status: Record<string, unknown>, enabled = true) => ({
    name: 's', fileType: 'asn1', primaryUrl: 'http://x', secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled,
    status: { lastAttemptAt: null, lastError: null, lastSuccessAt: null, url: null, issuer: 'CN=CA', thisUpdate: null, nextUpdate: null, crlNumber: '4', revokedCount: 2, sha256: null, bytes: null, ...status },
  }) as never;
  const inForce = (thisUpdate: string, nextUpdate: string, extra: Record<string, unknown> = {}) => source({ lastSuccessAt: thisUpdate, thisUpdate, nextUpdate, ...extra });

  test('fail: nothing in force, or past nextUpdate (saying what onExpiredCrl does)', () => {
    assert.equal(crlHealth(source({}), null, now).verdict, 'fail');
    assert.match(crlHealth(source({ lastError: 'HTTP 404' }), null, now).message, /no CRL downloaded yet; the last download failed: HTTP 404/);
    const expired = crlHealth(inForce('2026-05-20T00:00:00Z', '2026-06-01T11:00:00Z'), { onExpiredCrl: 'reject' } as never, now);
    assert.equal(expired.verdict, 'fail');
    assert.match(expired.message, /past its nextUpdate \(60 min ago\): certificates it covers are refused/);
    assert.match(crlHealth(inForce('2026-05-20T00:00:00Z', '2026-06-01T11:00:00Z'), { onExpiredCrl: 'accept-and-log' } as never, now).message, /accepted and logged/);
  });

  test('warn: under a quarter of its validity or an hour left, or the last download failed; ok otherwise', () => {
    assert.equal(crlHealth(inForce('2026-05-31T12:00:00Z', '2026-06-03T12:00:00Z'), null, now).verdict, 'ok'); // 2 d of 3 left
    assert.equal(crlHealth(inForce('2026-05-25T12:00:00Z', '2026-06-02T12:00:00Z'), null, now).verdict, 'warn'); // 1 d of 8
    assert.equal(crlHealth(inForce('2026-05-26T12:00:00Z', '2026-06-01T23:00:00Z'), null, now).verdict, 'warn'); // 11 h of 6.5 d
    assert.equal(crlHealth(inForce('2026-06-01T11:50:00Z', '2026-06-01T12:40:00Z'), null, now).verdict, 'warn'); // 40 min
    const failing = crlHealth(inForce('2026-06-01T00:00:00Z', '2026-06-08T00:00:00Z', { lastError: 'bad signature' }), null, now);
    assert.equal(failing.verdict, 'warn');
    assert.match(failing.message, /CRL number 4, 2 revoked, next update in 7 d; the last download failed: bad signature/);
    assert.deepEqual(crlHealth(source({}, false), null, now), { verdict: 'ok', message: 'disabled: not downloaded, not enforced' });
  });
});

test('--since: ISO times and durations back from now', () => {
  const now = new Date('2026-06-01T12:00:00Z');
  assert.equal(parseSince('15m', now), '2026-06-01T11:45:00.000Z');
  assert.equal(parseSince('2d', now), '2026-05-30T12:00:00.000Z');
  assert.equal(parseSince('2026-05-01T00:00:00Z', now), '2026-05-01T00:00:00.000Z');
  assert.throws(() => parseSince('yesterday', now), /ISO 8601/);
});
