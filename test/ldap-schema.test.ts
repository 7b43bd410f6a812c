// The directory schema certgate ships (deploy/ldap/): the slapd.conf schema, the OpenLDAP
// cn=config LDIF and the 389-ds LDIF define the same attributes and class; the cn=config LDIF
// loads into a real slapd configuration whose database then takes and filters cacPerson
// entries. (The slapd.conf file is what every slapd test loads; the 389-ds file is loaded
// into a real 389 Directory Server by test/real-directories.test.ts.)
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/run.ts';

const LDAP_DIR = fileURLToPath(new URL('../deploy/ldap/', import.meta.url));
const read = (name: string): Promise<string> => readFile(path.join(LDAP_DIR, name), 'utf8');

/** Every `( OID NAME ... )` definition in a schema file, unfolded, without 389's X-ORIGIN, keyed by NAME. */
function definitions(text: string): Map<string, string> {
  const unfolded = text.replace(/\r?\n[ \t]+/g, ' ').replace(/^#.*$/gm, '');
  const out = new Map<string, string>();
  for (const m of unfolded.matchAll(/\(\s*(1\.3\.6\.1\.4\.1\.99999\.[0-9.]+\s+NAME\s+'([^']+)'[^\n]*?)\s*\)\s*$/gm)) {
    out.set(m[2] as string, (m[1] as string).replace(/\s+X-ORIGIN\s+'[^']*'/, '').replace(/\s+/g, ' ').trim());
  }
  return out;
}

describe('deploy/ldap schema files', () => {
  test('cac.schema, cac.ldif and cac-389ds.ldif define the same attributes and object class', async () => {
    const [slapdConf, cnConfig, ds389] = await Promise.all([read('cac.schema'), read('cac.ldif'), read('cac-389ds.ldif')]);
    const reference = definitions(slapdConf);
    assert.deepEqual([...reference.keys()].sort(), ['cacPerson', 'caccn', 'cacemergency', 'cacexempt', 'cacserial']);
    assert.deepEqual(definitions(cnConfig), reference);
    assert.deepEqual(definitions(ds389), reference);
  });

  describe('cac.ldif in a real OpenLDAP cn=config', () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-cnconfig-'));
    });
    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    test('loads with slapadd -n0 next to core, cosine and inetorgperson; the database takes and filters cacPerson entries', async () => {
      const conf = path.join(dir, 'slapd.d');
      const data = path.join(dir, 'data');
      await mkdir(conf);
      await mkdir(data);
      const schemas = await Promise.all(['core', 'cosine', 'inetorgperson'].map((s) => readFile(`/etc/ldap/schema/${s}.ldif`, 'utf8')));
      const config = [
        `dn: cn=config\nobjectClass: olcGlobal\ncn: config\nolcPidFile: ${path.join(dir, 'slapd.pid')}`,
        'dn: cn=module{0},cn=config\nobjectClass: olcModuleList\ncn: module{0}\nolcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb',
        'dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema',
        ...schemas.map((s) => s.replace(/^#.*\n/gm, '').trim()),
        (await read('cac.ldif')).replace(/^#.*\n/gm, '').trim(),
        `dn: olcDatabase={1}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\nolcDatabase: {1}mdb\nolcDbDirectory: ${data}\nolcSuffix: dc=example,dc=com\nolcRootDN: cn=admin,dc=example,dc=com\nolcDbMaxSize: 16777216`,
      ].join('\n\n');
      await writeFile(path.join(dir, 'config.ldif'), config + '\n');
      await run('/usr/sbin/slapadd', ['-n', '0', '-F', conf, '-l', path.join(dir, 'config.ldif')]);
      await run('/usr/sbin/slaptest', ['-F', conf, '-u']);
      const entries = [
        'dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example',
        'dn: uid=card,dc=example,dc=com\nobjectClass: inetOrgPerson\nobjectClass: cacPerson\nuid: card\ncn: Card Holder\nsn: Holder\ncaccn: LAST.FIRST.1234567890\ncacserial: 0A1B\ncacexempt: FALSE\ncacemergency: 20991231000000.0Z',
        'dn: uid=past,dc=example,dc=com\nobjectClass: inetOrgPerson\nobjectClass: cacPerson\nuid: past\ncn: Past\nsn: Past\ncaccn: PAST.CARD.1\ncacemergency: 20200101000000Z',
      ].join('\n\n');
      await writeFile(path.join(dir, 'data.ldif'), entries + '\n');
      await run('/usr/sbin/slapadd', ['-n', '1', '-F', conf, '-l', path.join(dir, 'data.ldif')]);
      // The ORDERING rule works, with and without the fraction {t} carries.
      const found = await run('/usr/sbin/slapcat', ['-n', '1', '-F', conf, '-a', '(cacemergency>=20261201184313.0Z)']);
      assert.match(found, /^dn: uid=card,dc=example,dc=com$/m);
      assert.doesNotMatch(found, /uid=past/);
      const both = await run('/usr/sbin/slapcat', ['-n', '1', '-F', conf, '-a', '(&(caccn=last.first.1234567890)(cacserial=0a1b))']);
      assert.match(both, /^dn: uid=card,dc=example,dc=com$/m, 'caseIgnoreMatch');
    });
  });
});
