// The API server (SPEC §1, §2) as a Fastify instance, built without listening so tests
// can drive it with `app.inject` as well as over a real port.
import Fastify, { type FastifyServerOptions } from 'fastify';
import { AjvCompiler, type Options, type ValidatorCompiler, type ValidatorFactory } from '@fastify/ajv-compiler';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Redis } from 'ioredis';
import type { CrlStore } from '../shared/pki/crl/store.ts';
import { OcspChecker } from '../shared/pki/ocsp/checker.ts';
import { ConfigFollower, DEFAULT_POLL_MS } from '../shared/config/follower.ts';
import { Subscriptions } from '../shared/redis/subscriptions.ts';
import type { CrlStatus } from '../shared/config/schemas.ts';
import { revocationHook, type ApiHttpsOptions } from './mtls.ts';
import type { App, ApiContext } from './context.ts';
import { registerAuth } from './auth.ts';
import { ConfigCache } from './config-cache.ts';
import { registerConfigRoutes } from './config-routes.ts';
import { errorHandler, formatSchemaErrors, notFoundHandler, serviceUnavailable } from './errors.ts';
import { createApiMetrics, registerMetrics } from './metrics.ts';
import { registerOpenApi } from './openapi.ts';
import { registerActionRoutes } from './action-routes.ts';
import { RESOURCE_KINDS } from './resource-kinds.ts';
import { registerResourceRoutes } from './resource-routes.ts';
import { registerStatusRoutes } from './status-routes.ts';
import { registerTokenRoutes } from './token-routes.ts';
import { configWriter } from './versioning.ts';

export interface BuildAppOptions {
  redis: Redis;
  /** Bootstrap admin bearer token (API_TOKEN). */
  apiToken?: string;
  /** false: no logs; an object: pino options (secrets are redacted in any case). Default: info to stdout. */
  logger?: false | Exclude<FastifyServerOptions['logger'], boolean | undefined>;
  /** Mutual TLS (API_TLS_CERT, API_TLS_KEY, API_CLIENT_CA); absent: plain HTTP. */
  https?: ApiHttpsOptions;
  /** With https: the CRLs in force, for §2.6 `webInterface`. */
  crls?: Pick<CrlStore, 'check'>;
  /** With https: the OCSP checker for §2.6b `webInterface`; default one on `redis`, counted in /metrics. */
  ocsp?: Pick<OcspChecker, 'check'>;
  /** POST /v1/crl-sources/{name}/refresh: the scheduler (or its queue client). Absent: 503. */
  crlRefresh?: (name: string) => Promise<CrlStatus>;
  /**
   * The process's configuration follower (mode `mirror`), shared with the scheduler. Absent:
   * the app makes its own on a duplicate of `redis`, started by the first read, closed with it.
   */
  follower?: ConfigFollower;
}

/** Log paths that may hold secrets: the bearer token, bind passwords, private keys. */
const REDACTED_PATHS = [
  'req.headers.authorization',
  'password',
  'privateKeyPem',
  'token',
  '*.password',
  '*.privateKeyPem',
  '*.token',
  '*.*.password',
  '*.*.privateKeyPem',
];

/** Configuration documents can be large (PEM bundles); 16 MiB leaves room for many. */
const BODY_LIMIT = 16 * 1024 * 1024;

/**
 * Ajv as Fastify configures it, except that request bodies are not type-coerced. Coercion
 * is what query strings need (`?limit=20` is a string), but in a JSON body it turns `0`,
 * `""` and `false` into `null` where a field may be null: a limit written as `0` would
 * silently become "no limit". A body's types are the client's and must be as the schema says.
 */
function buildValidatorWithoutBodyCoercion(externalSchemas: Parameters<ValidatorFactory>[0], options?: { customOptions?: Options }): ValidatorCompiler {
  const coercing = AjvCompiler()(externalSchemas, { customOptions: options?.customOptions ?? {} });
  const strict = AjvCompiler()(externalSchemas, { customOptions: { ...options?.customOptions, coerceTypes: false } });
  return (route) => (route.httpPart === 'body' ? strict(route) : coercing(route));
}

export async function buildApp(opts: BuildAppOptions): Promise<App> {
  // Fastify types an HTTPS server apart; the routes do not care which one serves them.
  const app = Fastify({
    ...(opts.https ? { https: opts.https } : {}),
    logger: opts.logger === false ? false : { level: 'info', ...opts.logger, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } },
    bodyLimit: BODY_LIMIT,
    ajv: {
      customOptions: {
        // An unknown property is a client mistake (a typo in a flag name) and must be
        // reported, not silently dropped as Fastify's default would.
        removeAdditional: false,
        // Defaults inside anyOf are applied by TypeBox before validation (http-schemas.ts).
        strictSchema: false,
        discriminator: true,
      },
    },
    schemaController: { compilersFactory: { buildValidator: buildValidatorWithoutBodyCoercion } },
    schemaErrorFormatter: formatSchemaErrors,
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as App;
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);

  let follower = opts.follower;
  if (!follower) {
    const subscriber = opts.redis.duplicate({ lazyConnect: true, maxRetriesPerRequest: null });
    subscriber.on('error', () => undefined); // reads bypass the follower while it is down
    const subscriptions = new Subscriptions(subscriber);
    const own = new ConfigFollower({ redis: opts.redis, subscriptions, mode: 'mirror', pollMs: DEFAULT_POLL_MS, logger: app.log });
    app.addHook('onClose', async () => {
      await own.stop();
      subscriptions.close();
    });
    follower = own;
  }
  const cache = new ConfigCache(follower);
  // Configuration transactions WATCH, which is per connection: they get one of their own.
  const transactions = opts.redis.duplicate();
  transactions.on('error', () => undefined); // failures reach the writer as rejected commands
  app.addHook('onClose', async () => {
    transactions.disconnect();
  });
  const ctx: ApiContext = {
    redis: opts.redis, config: cache, write: configWriter(transactions, opts.redis, cache),
    crlRefresh: opts.crlRefresh ?? (async () => { throw serviceUnavailable('no CRL scheduler in this process'); }),
  };
  const metrics = createApiMetrics();
  if (opts.https) {
    const ocsp = opts.ocsp ?? new OcspChecker({ redis: opts.redis, logger: app.log, observer: metrics.ocsp });
    app.addHook('onRequest', revocationHook({ crls: opts.crls ?? null, ocsp }, async () => await cache.get(), opts.https));
  }

  // First: the OpenAPI document lists the routes registered after it.
  await registerOpenApi(app);
  registerAuth(app, opts.redis, opts.apiToken);
  registerMetrics(app, ctx, metrics);
  registerStatusRoutes(app, ctx);
  registerTokenRoutes(app, ctx);
  for (const kind of RESOURCE_KINDS) registerResourceRoutes(app, ctx, kind);
  registerActionRoutes(app, ctx);
  registerConfigRoutes(app, ctx);
  return app;
}
