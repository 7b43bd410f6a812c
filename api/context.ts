// What route modules share: the Fastify instance type (with TypeBox type inference),
// Redis, the configuration cache and the versioned, audited configuration writer.
import type { FastifyBaseLogger, FastifyInstance, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Redis } from 'ioredis';
import type { CrlStatus } from '../shared/config/schemas.ts';
import type { ConfigCache } from './config-cache.ts';
import type { ConfigWriter } from './versioning.ts';

export type App = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

export interface ApiContext {
  redis: Redis;
  config: ConfigCache;
  write: ConfigWriter;
  /** Downloads a CRL source now (the scheduler in this process, or through its queue). */
  crlRefresh(name: string): Promise<CrlStatus>;
}
