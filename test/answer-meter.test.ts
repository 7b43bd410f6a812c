// The answer meter (shared/directory/answer-meter.ts): byte and entry bounds on an LDAP
// message stream, whatever the chunking, and malformed streams cut off.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';
import { AnswerMeter } from '../shared/directory/answer-meter.ts';
import { tlv } from './helpers/der.ts';

/** An LDAPMessage with messageID `id` (1..4 bytes) and a protocolOp of `tag` holding `size` bytes. */
function msg(id: number, tag: number, size: number): Buffer {
  const idBytes: number[] = [];
  for (let v = id; v > 0 || idBytes.length === 0; v = Math.floor(v / 256)) idBytes.unshift(v % 256);
  return tlv(0x30, Buffer.concat([tlv(0x02, Buffer.from(idBytes)), tlv(tag, Buffer.alloc(size, 0x41))]));
}

const ENTRY = 0x64;
const REFERENCE = 0x73;
const DONE = 0x65;

function meter(maxEntries: number, maxBytes: number): { m: AnswerMeter; cut: string[] } {
  const cut: string[] = [];
  return { m: new AnswerMeter({ maxEntries, maxBytes }, (r) => cut.push(r)), cut };
}

/** Feeds `stream` in chunks of `size` bytes. */
function feedIn(m: AnswerMeter, stream: Buffer, size: number): void {
  for (let i = 0; i < stream.length; i += size) m.feed(stream.subarray(i, i + size));
}

describe('AnswerMeter', () => {
  const answer = Buffer.concat([msg(2, ENTRY, 300), msg(2, REFERENCE, 40), msg(2, ENTRY, 70_000), msg(2, REFERENCE, 10), msg(2, DONE, 7)]);

  for (const size of [1, 2, 3, 7, 64, 65536, answer.length]) {
    test(`two entries, references and a done pass, in chunks of ${size} bytes`, () => {
      const { m, cut } = meter(2, 1 << 20);
      feedIn(m, answer, size);
      assert.deepEqual(cut, []);
      assert.equal(m.violation, null);
    });

    test(`a third entry is cut off, in chunks of ${size} bytes`, () => {
      const { m, cut } = meter(2, 1 << 20);
      feedIn(m, Buffer.concat([answer, msg(2, ENTRY, 5)]), size);
      assert.equal(cut.length, 1);
      assert.match(cut[0] ?? '', /more than 2 entries/);
    });
  }

  test('reset() starts a new operation: entries and bytes count again', () => {
    const { m, cut } = meter(2, 100_000);
    for (let i = 0; i < 5; i++) {
      m.reset();
      m.feed(Buffer.concat([msg(i + 1, ENTRY, 40_000), msg(i + 1, ENTRY, 40_000), msg(i + 1, DONE, 7)]));
    }
    assert.deepEqual(cut, []);
  });

  test('more bytes than the bound are cut off, even inside one message (one 10 MB entry)', () => {
    const { m, cut } = meter(2, 1 << 20);
    feedIn(m, msg(3, ENTRY, 10 * 1024 * 1024), 65536);
    assert.equal(cut.length, 1, 'reported once');
    assert.match(cut[0] ?? '', /more than 1048576 bytes/);
  });

  test('messageIDs of 1 to 4 bytes and long-form lengths of 1 to 3 bytes are framed right', () => {
    const { m, cut } = meter(3, 1 << 24);
    m.feed(Buffer.concat([msg(1, ENTRY, 10), msg(300, ENTRY, 200), msg(70_000, ENTRY, 70_000), msg(2 ** 31 - 1, DONE, 3)]));
    assert.deepEqual(cut, []);
    m.feed(msg(5, ENTRY, 1));
    assert.equal(cut.length, 1);
  });

  test('a stream that is not LDAPMessages is cut off', () => {
    for (const garbage of [Buffer.from('HTTP/1.1 400 Bad Request\r\n'), Buffer.from([0x30, 0x80, 0x02]), Buffer.from([0x30, 0x85, 1, 2, 3, 4, 5]), Buffer.from([0x30, 0x03, 0x04, 0x01, 0x00])]) {
      const { m, cut } = meter(2, 1 << 20);
      m.feed(garbage);
      assert.equal(cut.length, 1, garbage.toString('hex'));
      assert.match(cut[0] ?? '', /malformed LDAP message/);
    }
  });

  test('watch() counts a socket’s data and stops listening once cut off; unwatch() stops counting', () => {
    const { m, cut } = meter(1, 1 << 20);
    const socket = new PassThrough() as unknown as Socket;
    m.watch(socket);
    socket.emit('data', msg(1, ENTRY, 5));
    assert.deepEqual(cut, []);
    m.unwatch(socket);
    socket.emit('data', msg(1, ENTRY, 5));
    assert.deepEqual(cut, [], 'not counted after unwatch');
    m.watch(socket);
    socket.emit('data', msg(1, ENTRY, 5));
    assert.equal(cut.length, 1);
    assert.equal(socket.listenerCount('data'), 0, 'no listener left once cut off');
  });
});
