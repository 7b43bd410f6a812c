// What the next-hop tests (test/next-hop.test.ts, test/next-hop-pool.test.ts) share: a target
// on loopback, an envelope, the Received: prefix a session would write, and the check that a
// relay came back refused at the expected stage with the next hop's reply.
import assert from 'node:assert/strict';
import type { NextHopTarget, RelayEnvelope, RelayResult } from '../../worker/relay/next-hop.ts';

export const PREFIX = Buffer.from('Received: from client.example by gateway.example.com (certgate); Fri, 27 Nov 2026 18:30:00 +0000\r\n');

/** The next hop at 127.0.0.1:port, plain SMTP, 5 s timeout. */
export function target(port: number, extra: Partial<NextHopTarget> = {}): NextHopTarget {
  return { host: '127.0.0.1', port, tls: 'none', caPem: null, heloName: 'gateway.example.com', timeoutMs: 5000, ...extra };
}

export function envelope(extra: Partial<RelayEnvelope> = {}): RelayEnvelope {
  return { from: 'alice@example.com', to: ['bob@example.org'], smtpUtf8: false, body8bit: false, ...extra };
}

export function assertRejected(r: RelayResult, code: number, stage: string, textPattern?: RegExp): void {
  assert.equal(r.accepted, false, `expected a failure, got ${JSON.stringify(r)}`);
  if (r.accepted) return;
  assert.equal(r.reply.code, code, JSON.stringify(r));
  assert.equal(r.stage, stage, JSON.stringify(r));
  if (textPattern) assert.match(r.reply.text, textPattern);
}
