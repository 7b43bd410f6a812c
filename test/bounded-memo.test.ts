// shared/util/bounded-memo.ts: what the filter and next-hop anchor caches rely on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { boundedMemo } from '../shared/util/bounded-memo.ts';

test('boundedMemo computes a key once, holds at most max keys, and keeps nothing from a throw', () => {
  const calls: string[] = [];
  const memo = boundedMemo(2, (k: string) => {
    calls.push(k);
    if (k === 'bad') throw new Error('bad key');
    return { k };
  });
  const a = memo('a');
  assert.equal(memo('a'), a, 'the same value again, not recomputed');
  memo('b');
  assert.deepEqual(calls, ['a', 'b']);
  memo('c'); // full: everything dropped, then c kept
  memo('a');
  assert.deepEqual(calls, ['a', 'b', 'c', 'a'], 'a was dropped when the memo filled');
  assert.throws(() => memo('bad'), /bad key/);
  assert.throws(() => memo('bad'), /bad key/);
  assert.deepEqual(calls.filter((k) => k === 'bad').length, 2, 'a throw is not kept');
});
