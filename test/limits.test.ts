// SPEC §2.4 / §2.5 limits and the refused session of §3 rules 1 and 3, as pure decisions:
// the exact replies, where each limit is reached, `null` as no limit.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  authFailureLimitReply, clientAdmission, listenerAdmission, badCommandLimitReply, idleTimeoutMs, isBadCommandReply, LIMIT_REPLIES,
  messageLimitReply, refusedSessionReply, REFUSED_SESSION_SILENCE_MS,
} from '../shared/policy/limits.ts';

const text = (r: { code: number; text: string } | null) => (r ? `${r.code} ${r.text}` : null);

describe('session limits', () => {
  test('the replies are SPEC word for word', () => {
    assert.equal(text(LIMIT_REPLIES.tooManyMessages), '452 4.5.3 Too many messages in this connection');
    assert.equal(text(LIMIT_REPLIES.tooManyConnectionsFromClient), '421 4.7.0 Too many connections from your address');
    assert.equal(text(LIMIT_REPLIES.tooManyConnections), '421 4.3.2 Too many connections, try again later');
    assert.equal(text(LIMIT_REPLIES.tooManyAuthFailures), '421 4.7.0 Too many authentication failures');
    assert.equal(text(LIMIT_REPLIES.tooManyErrors), '421 4.7.0 Too many errors');
    assert.equal(text(LIMIT_REPLIES.idleTimeout), '421 4.4.2 Idle timeout');
    assert.equal(REFUSED_SESSION_SILENCE_MS, 10_000);
  });

  test('each counting limit is reached at its value, and null never', () => {
    const cases = [
      { fn: (max: number | null, n: number) => messageLimitReply({ maxMessagesPerConnection: max }, n), r: LIMIT_REPLIES.tooManyMessages },
      { fn: (max: number | null, n: number) => authFailureLimitReply({ maxAuthFailuresPerConnection: max }, n), r: LIMIT_REPLIES.tooManyAuthFailures },
      { fn: (max: number | null, n: number) => badCommandLimitReply({ maxBadCommands: max }, n), r: LIMIT_REPLIES.tooManyErrors },
    ];
    for (const { fn, r } of cases) {
      for (const max of [1, 2, 3, 10, 100]) {
        for (let n = 0; n <= max + 2; n++) assert.deepEqual(fn(max, n), n >= max ? r : null, `${r.text}: max ${max}, count ${n}`);
      }
      for (const n of [0, 1, 1000, 1e9]) assert.equal(fn(null, n), null);
    }
  });

  test('bad commands are the replies 500-504 only', () => {
    for (let code = 200; code < 600; code++) assert.equal(isBadCommandReply({ code, text: '' }), code >= 500 && code <= 504, String(code));
  });

  test('a refused session answers everything but QUIT with its refusal, QUIT with 221 and closes', () => {
    const refusal = { code: 554, text: '5.7.1 Client certificate required' };
    for (const c of ['EHLO', 'HELO', 'MAIL', 'RCPT', 'DATA', 'AUTH', 'STARTTLS', 'NOOP', 'RSET', 'VRFY', 'XYZZY', '']) {
      assert.deepEqual(refusedSessionReply(refusal, c), { reply: refusal, close: false }, c);
    }
    assert.deepEqual(refusedSessionReply(refusal, 'QUIT'), { reply: { code: 221, text: '2.0.0 Bye' }, close: true });
  });

  test('idle timeout in ms', () => {
    assert.equal(idleTimeoutMs({ idleTimeoutSeconds: 300 }), 300_000);
  });

  test('admission: maxConnections for every connection (silent on implicit TLS), then per client', () => {
    for (let open = 0; open <= 4; open++) {
      for (const implicitTls of [false, true]) {
        assert.deepEqual(listenerAdmission({ maxConnections: 3 }, open, implicitTls), open >= 3 ? { reply: LIMIT_REPLIES.tooManyConnections, silent: implicitTls } : null);
      }
      for (const max of [1, 2, 3]) assert.deepEqual(clientAdmission({ maxConnectionsPerClient: max }, open), open >= max ? LIMIT_REPLIES.tooManyConnectionsFromClient : null);
      assert.equal(clientAdmission({ maxConnectionsPerClient: null }, open * 1000), null);
    }
  });
});
