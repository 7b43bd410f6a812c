// Routes whose contract is fixed (SPEC §2.1, §2.6) but whose work lands with later
// issues: the LDAP query test and the on-demand CRL refresh. They validate their input
// and answer 501 until then, so clients and the OpenAPI document already see them.
import { Type } from 'typebox';
import { CrlStatus, Name } from '../shared/schemas.ts';
import type { ApiContext, App } from './context.ts';
import { notFound, notImplemented } from './errors.ts';
import { runLdapTest } from './ldap-test.ts';
import { errorResponses, LdapProfileTest, LdapProfileTestResult, ref } from './http-schemas.ts';

const NameParams = Type.Object({ name: Name });

export function registerPendingRoutes(app: App, ctx: ApiContext): void {
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
        response: { 200: ref(CrlStatus), ...errorResponses(401, 403, 404, 501) },
      },
    },
    async (request) => {
      const { crlSources } = await ctx.config.get();
      if (!crlSources.some((s) => s.name === request.params.name)) throw notFound(`CRL source "${request.params.name}" does not exist`);
      throw notImplemented('refreshing a CRL source on demand is not implemented yet');
    },
  );
}
