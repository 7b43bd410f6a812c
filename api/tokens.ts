// API tokens (bearer). Only a SHA-256 of each token is stored: a copy of Redis does not
// give access to the API. The token itself is shown once, when it is created.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import { keys } from '../shared/redis/keys.ts';
import type { ApiToken } from './http-schemas.ts';

export type Role = ApiToken['role'];
export interface Principal {
  name: string;
  role: Role;
}

/** The principal of `API_TOKEN`; the name is reserved so that the audit log is unambiguous. */
export const BOOTSTRAP_PRINCIPAL: Principal = { name: 'bootstrap', role: 'admin' };

const sha256 = (text: string) => createHash('sha256').update(text).digest();

// Names are unique; checking and inserting in one script keeps two concurrent creations
// of the same name from both succeeding.
const CREATE_SCRIPT = `
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if cjson.decode(v).name == ARGV[3] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`;

const DELETE_SCRIPT = `
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if cjson.decode(all[i + 1]).name == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    return 1
  end
end
return 0`;

/** Creates a token; null when the name is taken. */
export async function createToken(redis: Redis, name: string, role: Role): Promise<string | null> {
  const token = randomBytes(32).toString('base64url');
  const record: ApiToken = { name, role, createdAt: new Date().toISOString() };
  const created = await redis.eval(CREATE_SCRIPT, 1, keys.tokens, sha256(token).toString('hex'), JSON.stringify(record), name);
  return created === 1 ? token : null;
}

export async function listTokens(redis: Redis): Promise<ApiToken[]> {
  const records = (await redis.hvals(keys.tokens)).map((v) => JSON.parse(v) as ApiToken);
  return records.sort((a, b) => a.name.localeCompare(b.name));
}

export async function deleteToken(redis: Redis, name: string): Promise<boolean> {
  return (await redis.eval(DELETE_SCRIPT, 1, keys.tokens, name)) === 1;
}

/**
 * Who presents `token`: the bootstrap admin (compared in constant time) or a stored
 * token (looked up by hash, which leaks nothing about the token through timing).
 */
export async function authenticateToken(redis: Redis, token: string, bootstrapToken: string | undefined): Promise<Principal | null> {
  const digest = sha256(token);
  if (bootstrapToken && timingSafeEqual(digest, sha256(bootstrapToken))) return BOOTSTRAP_PRINCIPAL;
  const json = await redis.hget(keys.tokens, digest.toString('hex'));
  if (json === null) return null;
  const { name, role } = JSON.parse(json) as ApiToken;
  return { name, role };
}
