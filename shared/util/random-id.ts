// Session and message ids: 16 hex digits from the CSPRNG. randomBytes(8) per id costs ~6 µs
// (a call into OpenSSL's DRBG and its locks; perf on bench/smtp: two ids a session); taking
// them from a 4 KB block drawn at once costs a slice. Like crypto.randomUUID's own cache.
import { randomBytes } from 'node:crypto';

const ID_BYTES = 8;
const BLOCK_BYTES = 4096;
let block = randomBytes(BLOCK_BYTES);
let offset = 0;

/** 16 lowercase hex digits, never repeated in practice (64 random bits). */
export function randomId(): string {
  if (offset + ID_BYTES > BLOCK_BYTES) {
    block = randomBytes(BLOCK_BYTES);
    offset = 0;
  }
  const id = block.toString('hex', offset, offset + ID_BYTES);
  offset += ID_BYTES;
  return id;
}
