// The Received: header a relayed message gains (SPEC §3 rule 8): the user id as the
// directory has it (`@` kept), and nothing a client or a directory chose can break out.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { receivedHeader, type ReceivedFacts } from '../worker/smtp/received.ts';

const base: ReceivedFacts = {
  helo: 'client.example', clientHostname: null, clientAddress: '192.0.2.7', hostname: 'gateway.example.com',
  protocol: 'ESMTPSA', id: '3f9c', user: { id: 'jdoe', method: 'certificate' }, date: new Date('2026-11-27T18:30:00Z'),
};

describe('receivedHeader', () => {
  test('the form SPEC §3 rule 8 shows', () => {
    assert.equal(
      receivedHeader(base),
      'Received: from client.example (unknown [192.0.2.7]) by gateway.example.com (certgate) with ESMTPSA id 3f9c (authenticated as jdoe by certificate); Fri, 27 Nov 2026 18:30:00 +0000\r\n',
    );
  });

  test('a user id with @ (an AD userPrincipalName, a mail address) stays whole', () => {
    const h = receivedHeader({ ...base, user: { id: 'asmith@samdom.example.com', method: 'smtp-auth' } });
    assert.match(h, /\(authenticated as asmith@samdom\.example\.com by smtp-auth\);/);
  });

  test('nothing breaks out of the comment or the header line', () => {
    const hostile = ['a)(b', 'x\r\nBcc: victim@example.com', 'back\\slash', 'semi;colon', 'Roe, Jane', 'jürgen', 'tab\there', '(nested (comment))'];
    for (const id of hostile) {
      const h = receivedHeader({ ...base, helo: id, user: { id, method: 'smtp-auth' } });
      assert.equal(h.indexOf('\r\n'), h.length - 2, `one line for ${JSON.stringify(id)}`);
      assert.ok(!/[\r\n\t]/.test(h.slice(0, -2)), JSON.stringify(id));
      const comment = /\(authenticated as (.*) by smtp-auth\);/.exec(h)?.[1] ?? '';
      assert.ok(comment.length > 0, h);
      assert.doesNotMatch(comment, /[()\\; ,\u0080-\uffff]/, `${JSON.stringify(id)} → ${comment}`);
    }
  });
});
