// Actions on resources (SPEC §2.1, §2.6): run an LDAP profile's query now, download a
// CRL source now.
import { Type } from 'typebox';
import { CrlStatus, Name } from '../shared/config/schemas.ts';
import type { ApiContext, App } from './context.ts';
import { HttpError, notFound, serviceUnavailable } from './errors.ts';
import { CrlSourceNotFoundError } from './crl-scheduler.ts';
import { runLdapTest } from './ldap-test.ts';
import { errorResponses, LdapProfileTest, LdapProfileTestResult, ref } from './http-schemas.ts';

const NameParams = Type.Object({ name: Name });

export function registerActionRoutes(app: App, ctx: ApiContext): void {
  app.post(
    '/v1/ldap-profiles/:name/test',
    {
      schema: {
        tags: ['ldap-profiles'],
        operationId: 'testLdapProfile',
        summary: 'Run the certificate or SMTP auth query of an LDAP profile now',
        params: NameParams,
        body: ref(LdapProfileTest),
        response: { 200: ref(LdapProfileTestResult), ...errorResponses(400, 401, 403, 404) },
      },
    },
    async (request) => {
      const { ldapProfiles } = await ctx.config.get();
      const profile = ldapProfiles.find((p) => p.name === request.params.name);
      if (!profile) throw notFound(`LDAP profile "${request.params.name}" does not exist`);
      return runLdapTest(profile, request.body);
    },
  );

  app.post(
    '/v1/crl-sources/:name/refresh',
    {
      schema: {
        tags: ['crl-sources'],
        operationId: 'refreshCrlSource',
        summary: 'Download the CRL of a source now and answer the resulting status',
        params: NameParams,
        response: { 200: ref(CrlStatus), ...errorResponses(401, 403, 404, 503) },
      },
    },
    async (request) => {
      const { crlSources } = await ctx.config.get();
      if (!crlSources.some((s) => s.name === request.params.name)) throw notFound(`CRL source "${request.params.name}" does not exist`);
      try {
        return await ctx.crlRefresh(request.params.name);
      } catch (err) {
        if (err instanceof CrlSourceNotFoundError) throw notFound(err.message);
        if (err instanceof HttpError) throw err;
        // e.g. SCHEDULER=off and no scheduler process took the job in time
        throw serviceUnavailable(`CRL refresh did not complete: ${(err as Error).message}`);
      }
    },
  );
}
