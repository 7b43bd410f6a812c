// The OpenAPI document: valid, components named after the schemas' $ids, secrets
// write-only, bearer auth everywhere but the public routes, and identical to the
// committed openapi/openapi.json.
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import SwaggerParser from '@apidevtools/swagger-parser';
import { Redis } from 'ioredis';
import { buildApp } from '../api/app.ts';
import { generateOpenApiJson, OPENAPI_FILE } from '../api/openapi-document.ts';

describe('OpenAPI document', () => {
  let text: string;
  let doc: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- an OpenAPI document
  before(async () => {
    text = await generateOpenApiJson();
    doc = JSON.parse(text);
  });

  test('is a valid OpenAPI document', async () => {
    await SwaggerParser.validate(structuredClone(doc));
    assert.equal(doc.openapi, '3.1.0');
  });

  test('names its component schemas after the $ids', () => {
    const names = Object.keys(doc.components.schemas);
    for (const name of ['LdapProfile', 'LdapAuthProfile', 'CertificateAuthProfile', 'SmtpAuthProfile', 'MailFlowPolicy', 'Listener', 'CrlSource', 'CrlStatus', 'CrlSettings', 'OcspSettings', 'Config', 'SessionEvent', 'WorkerStatus', 'AuditEntry', 'Error']) {
      assert.ok(names.includes(name), `component ${name}`);
    }
    assert.deepEqual(names.filter((n) => n.startsWith('def-')), []);
    const createListener = doc.paths['/v1/listeners'].post;
    assert.equal(createListener.requestBody.content['application/json'].schema.$ref, '#/components/schemas/Listener');
    assert.equal(doc.components.schemas.SmtpAuthProfile.discriminator.propertyName, 'type');
  });

  test('marks secrets write-only and their flags read-only', () => {
    const bind = doc.components.schemas.LdapProfile.properties.bind.anyOf.find((s: { type?: string }) => s.type === 'object');
    assert.equal(bind.properties.password.writeOnly, true);
    assert.equal(bind.properties.passwordSet.readOnly, true);
    const tls = doc.components.schemas.Listener.properties.tls.anyOf.find((s: { type?: string }) => s.type === 'object');
    assert.equal(tls.properties.privateKeyPem.writeOnly, true);
    assert.equal(tls.properties.privateKeySet.readOnly, true);
  });

  test('asks for a bearer token everywhere but /health', () => {
    assert.deepEqual(doc.components.securitySchemes.bearerAuth, { type: 'http', scheme: 'bearer' });
    assert.deepEqual(doc.security, [{ bearerAuth: [] }]);
    assert.deepEqual(doc.paths['/health'].get.security, []);
    for (const [path, operations] of Object.entries<Record<string, { responses: Record<string, unknown> }>>(doc.paths)) {
      if (path === '/health') continue;
      for (const [method, operation] of Object.entries(operations)) assert.ok(operation.responses['401'], `${method} ${path} documents 401`);
    }
    assert.equal(doc.paths['/openapi.json'], undefined, 'the document does not list itself');
  });

  test('summaries read as English (plurals, a/an by sound) and discriminators map their values', () => {
    const summaries = Object.values<Record<string, { summary?: string }>>(doc.paths).flatMap((ops) => Object.values(ops).map((o) => o.summary ?? ''));
    assert.ok(summaries.includes('List mail flow policies'));
    assert.ok(summaries.includes('Create an SMTP auth profile'));
    assert.ok(summaries.includes('Create an LDAP profile'));
    assert.ok(summaries.includes('Create a CRL source'));
    assert.deepEqual(summaries.filter((s) => /policys|\ba (SMTP|LDAP|API)\b|\ban (mail|listener|CRL)\b/.test(s)), []);
    assert.equal(doc.paths['/v1/mail-flow-policies'].get.operationId, 'listMailFlowPolicies');
    assert.deepEqual(doc.components.schemas.SmtpAuthProfile.discriminator.mapping, {
      ldap: '#/components/schemas/LdapAuthProfile',
      certificate: '#/components/schemas/CertificateAuthProfile',
    });
  });

  test('GET /openapi.json serves the same document', async () => {
    const redis = new Redis({ lazyConnect: true });
    const app = await buildApp({ redis, logger: false });
    try {
      const res = await app.inject({ method: 'GET', url: '/openapi.json' });
      assert.equal(res.statusCode, 200);
      assert.deepEqual(res.json(), doc);
    } finally {
      await app.close();
      redis.disconnect();
    }
  });

  test('equals the committed openapi/openapi.json', async () => {
    const committed = await readFile(OPENAPI_FILE, 'utf8').catch(() => '');
    assert.ok(committed === text, 'openapi/openapi.json is stale: regenerate it with `npm run openapi` and commit it');
  });
});
