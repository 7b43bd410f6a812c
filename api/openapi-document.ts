// The OpenAPI document as committed in openapi/openapi.json: generated from the routes
// of an app that is built but never started (no Redis connection is made).
import { Redis } from 'ioredis';
import { buildApp } from './app.ts';

export const OPENAPI_FILE = new URL('../openapi/openapi.json', import.meta.url);

/** The document, pretty-printed with a final newline (stable: same routes, same text). */
export async function generateOpenApiJson(): Promise<string> {
  const redis = new Redis({ lazyConnect: true });
  const app = await buildApp({ redis, logger: false });
  try {
    await app.ready();
    return `${JSON.stringify(app.swagger(), null, 2)}\n`;
  } finally {
    await app.close();
    redis.disconnect();
  }
}
