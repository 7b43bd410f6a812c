// Sender groups (CIDR lists matched by BlockList) and the API's CIDR check: IPv4, IPv6 and
// IPv4-mapped IPv6 clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileSenderGroups, parseCidr, selectPolicyName } from '../shared/policy/sender-groups.ts';

/** Whether one CIDR (as a one-group list) matches the address. */
const matchesCidr = (address: string, cidr: string): boolean =>
  selectPolicyName(compileSenderGroups([{ name: 'g', senders: [cidr], policy: 'IN' }]), 'OUT', address) === 'IN';

test('sender groups: IPv4, IPv6, and an IPv4 client seen on a dual-stack socket', () => {
  const cases: [string, string, boolean][] = [
    ['127.0.0.1', '127.0.0.0/8', true],
    ['128.0.0.1', '127.0.0.0/8', false],
    ['::ffff:127.0.0.1', '127.0.0.0/8', true],
    ['::ffff:7f00:1', '127.0.0.0/8', true],
    ['::ffff:128.0.0.1', '127.0.0.0/8', false],
    ['127.0.0.1', '::ffff:127.0.0.0/104', true],
    ['::1', '::1/128', true],
    ['::1', '127.0.0.0/8', false],
    ['127.0.0.1', '::1/128', false],
    ['2001:db8::5', '2001:db8::/32', true],
    ['2001:db9::5', '2001:db8::/32', false],
    ['2001:db8:0:0:0:0:0:5', '2001:db8::5/128', true],
    ['10.1.2.3', '0.0.0.0/0', true],
    ['fe80::1%eth0', 'fe80::/10', true],
    ['192.0.2.7', '192.0.2.7', true],
    ['192.0.2.8', '192.0.2.7', false],
    ['192.0.2.200', '192.0.2.128/25', true],
    ['192.0.2.100', '192.0.2.128/25', false],
    ['not an address', '0.0.0.0/0', false],
    ['127.0.0.1', 'not a cidr', false],
  ];
  for (const [address, cidr, expected] of cases) assert.equal(matchesCidr(address, cidr), expected, `${address} in ${cidr}`);
});

test('parseCidr: clear errors for what is not a network', () => {
  assert.deepEqual(parseCidr('10.0.0.0/8'), { family: 4, network: 0x0a000000n, prefix: 8 });
  assert.deepEqual(parseCidr('::1'), { family: 6, network: 1n, prefix: 128 });
  for (const [text, message] of [
    ['10.0.0.1/8', /host bits set; did you mean 10\.0\.0\.0\/8\?/],
    ['2001:db8::1/32', /did you mean 2001:db8::\/32\?/],
    ['1.2.3.4/33', /invalid prefix length \(0-32 for IPv4\)/],
    ['::/129', /invalid prefix length \(0-128 for IPv6\)/],
    ['1.2.3.4/', /invalid prefix length/],
    ['1.2.3.4/8x', /invalid prefix length/],
    ['example.com/24', /not an IPv4 or IPv6 CIDR/],
    ['fe80::1%eth0/64', /not an IPv4 or IPv6 CIDR/],
  ] as const) {
    assert.throws(() => parseCidr(text), message, text);
  }
});

test('sender groups: the first group that contains the client gives the policy, else the default', () => {
  const groups = compileSenderGroups([
    { name: 'a', senders: ['10.0.0.0/8'], policy: 'A' },
    { name: 'b', senders: ['10.1.0.0/16', '::1/128'], policy: 'B' },
  ]);
  assert.equal(selectPolicyName(groups, 'D', '10.1.2.3'), 'A');
  assert.equal(selectPolicyName(groups, 'D', '::1'), 'B');
  assert.equal(selectPolicyName(groups, 'D', '192.0.2.1'), 'D');
  assert.equal(selectPolicyName(groups, 'D', ''), 'D', 'no address: the default policy');
});
