/**
 * LDIF builders for test users: inetOrgPerson entries, with the auxiliary
 * cacPerson class (deploy/ldap/cac.schema) when a card attribute is given.
 */
import { createHash, randomBytes } from 'node:crypto';
import { generalizedTime } from '../../shared/directory/filter.ts';

export const PEOPLE_DN = 'ou=people,dc=example,dc=com';

export interface PersonSpec {
  uid: string;
  /** Stored in userPassword; omitted entirely when undefined. */
  password?: string;
  /** How to store the password: as given (default) or as an `{SSHA}` hash. */
  passwordScheme?: 'plain' | 'ssha';
  cn?: string;
  sn?: string;
  mail?: string;
  caccn?: string;
  cacserial?: string;
  cacexempt?: boolean;
  /** End of the emergency window (a Date, or a GeneralizedTime string). */
  cacemergency?: Date | string;
  /** Parent entry; must exist. Default `ou=people,dc=example,dc=com`. */
  parentDn?: string;
}

export function personDn(uid: string, parentDn = PEOPLE_DN): string {
  return `uid=${escapeDnValue(uid)},${parentDn}`;
}

/** An LDIF record (no trailing blank line) for one person. */
export function personLdif(p: PersonSpec): string {
  const hasCard = p.caccn !== undefined || p.cacserial !== undefined || p.cacexempt !== undefined || p.cacemergency !== undefined;
  const lines: string[] = [
    ldifLine('dn', personDn(p.uid, p.parentDn)),
    'objectClass: top',
    'objectClass: person',
    'objectClass: organizationalPerson',
    'objectClass: inetOrgPerson',
    ...(hasCard ? ['objectClass: cacPerson'] : []),
    ldifLine('uid', p.uid),
    ldifLine('cn', p.cn ?? p.uid),
    ldifLine('sn', p.sn ?? p.cn ?? p.uid),
  ];
  if (p.mail !== undefined) lines.push(ldifLine('mail', p.mail));
  if (p.password !== undefined) {
    lines.push(ldifLine('userPassword', p.passwordScheme === 'ssha' ? sshaHash(p.password) : p.password));
  }
  if (p.caccn !== undefined) lines.push(ldifLine('caccn', p.caccn));
  if (p.cacserial !== undefined) lines.push(ldifLine('cacserial', p.cacserial));
  if (p.cacexempt !== undefined) lines.push(ldifLine('cacexempt', p.cacexempt ? 'TRUE' : 'FALSE'));
  if (p.cacemergency !== undefined) {
    const t = typeof p.cacemergency === 'string' ? p.cacemergency : generalizedTime(p.cacemergency);
    lines.push(ldifLine('cacemergency', t));
  }
  return lines.join('\n');
}

/** Several people as one LDIF document. */
export function peopleLdif(people: PersonSpec[]): string {
  return people.map(personLdif).join('\n\n') + '\n';
}

/** `{SSHA}` as slappasswd makes it: base64(SHA1(password + salt) + salt), 8-byte salt. */
export function sshaHash(password: string): string {
  const salt = randomBytes(8);
  const digest = createHash('sha1').update(password, 'utf8').update(salt).digest();
  return `{SSHA}${Buffer.concat([digest, salt]).toString('base64')}`;
}

/** `attr: value`, or `attr:: base64` when the value is not a SAFE-STRING (RFC 2849). */
function ldifLine(attr: string, value: string): string {
  return isSafeString(value) ? `${attr}: ${value}` : `${attr}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

/** RFC 2849 SAFE-STRING: ASCII without NUL/LF/CR, not starting with space, ":" or "<", not ending with space. */
function isSafeString(value: string): boolean {
  if (value === '') return true;
  if (/^[ :<]/.test(value) || value.endsWith(' ')) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0 || c === 10 || c === 13 || c > 127) return false;
  }
  return true;
}

/** RFC 4514 escaping of an attribute value inside a DN. */
function escapeDnValue(value: string): string {
  return value
    .replace(/[\\,+"<>;=]/g, (c) => `\\${c}`)
    .replace(/^[ #]/, (c) => `\\${c}`)
    .replace(/ $/, '\\ ')
    .replace(/\0/g, '\\00');
}
