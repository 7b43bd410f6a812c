import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomId } from '../shared/util/random-id.ts';

test('randomId: 16 hex digits, none repeated across many refills of its block', () => {
  const seen = new Set<string>();
  // 4096-byte blocks of 8-byte ids: 512 a block, so 5,000 ids cross nine refills.
  for (let i = 0; i < 5000; i++) {
    const id = randomId();
    assert.match(id, /^[0-9a-f]{16}$/);
    seen.add(id);
  }
  assert.equal(seen.size, 5000);
});
