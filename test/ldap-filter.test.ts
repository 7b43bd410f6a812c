import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkFilterTemplate,
  escapeFilterValue,
  generalizedTime,
  parseFilter,
  renderFilter,
  unknownTokens,
} from '../shared/directory/filter.ts';
import { QUERY_TOKENS } from '../shared/directory/tokens.ts';

const SPEC_CERT_QUERY = '(&(caccn={cn})(cacserial={sn}))';
const SPEC_ALLOW_QUERY = '(&(uid={u})(|(!(caccn=*))(cacexempt=*)(cacemergency>={t})))';

/** Inputs an attacker controls (SMTP user names, certificate fields). */
const HOSTILE = [
  '*',
  ')(uid=*',
  '*)(uid=*))(|(uid=*',
  'alice)(|(objectClass=*)',
  '\\',
  '\\2a',
  'a\\29b',
  'nul\0byte',
  '\0',
  '(',
  ')',
  '()',
  '&',
  '|(uid=*)',
  '!',
  'Jürgen',
  '日本',
  'emoji 😀',
  'tab\tnewline\ncr\r',
  '\u007f\u0001',
  'x'.repeat(1024),
  '€'.repeat(400),
  '\ud800 lone surrogate',
];

function equalityValue(filter: string): Buffer {
  const node = parseFilter(filter);
  if (node.type !== 'equality') assert.fail(`${filter} is not an equality filter`);
  return node.value;
}

describe('escapeFilterValue', () => {
  test('escapes the RFC 4515 specials', () => {
    assert.equal(escapeFilterValue('*'), '\\2a');
    assert.equal(escapeFilterValue('('), '\\28');
    assert.equal(escapeFilterValue(')'), '\\29');
    assert.equal(escapeFilterValue('\\'), '\\5c');
    assert.equal(escapeFilterValue('\0'), '\\00');
    assert.equal(escapeFilterValue(')(uid=*'), '\\29\\28uid=\\2a');
  });

  test('escapes every byte of non-ASCII characters as lowercase hex', () => {
    assert.equal(escapeFilterValue('Jürgen'), 'J\\c3\\bcrgen');
    assert.equal(escapeFilterValue('日本'), '\\e6\\97\\a5\\e6\\9c\\ac');
    assert.equal(escapeFilterValue('😀'), '\\f0\\9f\\98\\80');
  });

  test('leaves ordinary printable ASCII alone', () => {
    const plain = 'John.Doe-123_x@example.com =,+<>;"#';
    assert.equal(escapeFilterValue(plain), plain);
    assert.equal(escapeFilterValue(''), '');
  });

  test('escapes control characters and DEL', () => {
    assert.equal(escapeFilterValue('a\tb\nc\u007f'), 'a\\09b\\0ac\\7f');
  });

  for (const input of HOSTILE) {
    test(`hostile value ${JSON.stringify(input.length > 40 ? input.slice(0, 40) + '…' : input)} cannot change the filter shape`, () => {
      const escaped = escapeFilterValue(input);
      // Printable ASCII only, and no structural character survives.
      assert.match(escaped, /^[\x20-\x7e]*$/);
      assert.doesNotMatch(escaped.replace(/\\[0-9a-f]{2}/g, ''), /[*()\\\0]/);
      // Inside a filter it is still one equality assertion whose value is exactly the input's UTF-8 bytes.
      const filter = `(uid=${escaped})`;
      assert.equal(checkFilterTemplate(filter), null);
      assert.deepEqual(equalityValue(filter), Buffer.from(input, 'utf8'));
    });
  }

  test('a 1 KB name is escaped in full', () => {
    const name = 'ä'.repeat(512);
    const escaped = escapeFilterValue(name);
    assert.equal(escaped, '\\c3\\a4'.repeat(512));
    assert.equal(renderFilter('(uid={u})', { u: name }), `(uid=${escaped})`);
  });
});

describe('renderFilter', () => {
  test('replaces tokens with escaped values', () => {
    assert.equal(renderFilter(SPEC_CERT_QUERY, { cn: 'DOE.JOHN.*', sn: '0A1B' }), '(&(caccn=DOE.JOHN.\\2a)(cacserial=0A1B))');
    assert.equal(renderFilter('(uid={u})', { u: ')(uid=*' }), '(uid=\\29\\28uid=\\2a)');
  });

  test('replaces a token used several times', () => {
    assert.equal(renderFilter('(|(uid={u})(mail={u}))', { u: 'a*' }), '(|(uid=a\\2a)(mail=a\\2a))');
  });

  test('renders the allowance query with {u} and {t}', () => {
    const t = generalizedTime(new Date(Date.UTC(2026, 10, 27, 18, 28, 14)));
    assert.equal(
      renderFilter(SPEC_ALLOW_QUERY, { u: 'jdoe', t }),
      '(&(uid=jdoe)(|(!(caccn=*))(cacexempt=*)(cacemergency>=20261127182814.0Z)))',
    );
  });

  test('returns null when a used token is missing, null or empty', () => {
    assert.equal(renderFilter(SPEC_CERT_QUERY, { cn: 'X' }), null);
    assert.equal(renderFilter(SPEC_CERT_QUERY, { cn: 'X', sn: null }), null);
    assert.equal(renderFilter(SPEC_CERT_QUERY, { cn: '', sn: '0A' }), null);
    assert.equal(renderFilter('(uid={u})', {}), null);
  });

  test('returns null for an unknown token (it has no value)', () => {
    assert.equal(renderFilter('(uid={user})', { u: 'x' }), null);
  });

  test('ignores values of tokens the template does not use', () => {
    assert.equal(renderFilter('(uid={u})', { u: 'x', cn: null, sn: '' }), '(uid=x)');
  });

  test('a template without tokens is returned unchanged', () => {
    assert.equal(renderFilter('(objectClass=person)', {}), '(objectClass=person)');
  });
});

describe('unknownTokens', () => {
  test('lists tokens that are not query tokens, once each', () => {
    assert.deepEqual(unknownTokens('(&(uid={user})(cn={cn})(x={user})(y={UPN})(z={}))'), ['user', 'UPN', '']);
  });

  test('accepts every documented token', () => {
    assert.deepEqual(unknownTokens(QUERY_TOKENS.map((t) => `(a=${'{' + t + '}'})`).join('')), []);
  });
});

describe('checkFilterTemplate', () => {
  const valid = [
    SPEC_CERT_QUERY,
    SPEC_ALLOW_QUERY,
    '(uid={u})',
    '(sAMAccountName={u})',
    '(|(uid={u})(mail={u})(userPrincipalName={upn}))',
    '(&(objectClass=person)(!(userAccountControl:1.2.840.113556.1.4.803:=2))(sAMAccountName={u}))',
    '(cn=*{cn}*)',
    '(cn={cn}*)',
    '(mail~={e})',
    '(cacemergency<={t})',
    '(cn;lang-en={cn})',
    '(cn:dn:2.5.13.2:={cn})',
    '(:caseExactMatch:={cn})',
    '(certificateFingerprint={fp})',
    '(&(issuer={i})(subject={s}))',
    '(description=caf\\c3\\a9)',
    '(cn=café)',
    '(cn=)',
  ];
  for (const template of valid) {
    test(`accepts ${template}`, () => {
      assert.equal(checkFilterTemplate(template), null);
    });
  }

  const invalid: Array<[string, RegExp]> = [
    ['(uid={user})', /unknown token \{user\}/],
    ['(uid={U})', /unknown token \{U\}/],
    ['(&(uid={u})(x={nope})(y={bad}))', /unknown tokens \{nope\}, \{bad\}/],
    ['', /empty/],
    ['uid={u}', /must start with "\("/],
    ['(uid={u}', /unbalanced/],
    ['(uid={u}))', /after the end/],
    ['((uid={u}))', /attribute/],
    ['(&(uid={u})', /unbalanced/],
    ['(&)', /at least one/],
    ['(|)', /at least one/],
    ['(!)', /expected "\("/],
    ['(uid=a)(uid=b)', /after the end/],
    ['({u}=x)', /attribute/],
    ['(uid{u}=x)', /expected "="/],
    ['(uid={u}(x=y))', /unescaped "\("/],
    ['(uid=\\zz)', /two hex digits/],
    ['(uid=\\4)', /two hex digits/],
    ['(uid=**)', /\*\*/],
    ['(uid>=a*)', /only allowed after "="/],
    ['(=x)', /attribute/],
    ['(:dn:={u})', /matching rule/],
    ['(uid={u}})', /unmatched "\}"/],
    ['(uid={{u})', /unmatched "\{"/],
    ['(uid=x\0)', /NUL/],
    ['('.repeat(100) + 'a=b' + ')'.repeat(100), /./],
  ];
  for (const [template, message] of invalid) {
    test(`rejects ${JSON.stringify(template.length > 40 ? template.slice(0, 40) + '…' : template)}`, () => {
      const error = checkFilterTemplate(template);
      assert.equal(typeof error, 'string');
      assert.match(error ?? '', message);
    });
  }

  test('deep nesting is refused, not a stack overflow', () => {
    const deep = '(!'.repeat(1000) + '(a=b)' + ')'.repeat(1000);
    assert.match(checkFilterTemplate(deep) ?? '', /nested too deeply/);
  });
});

describe('parseFilter', () => {
  test('builds the structure of the allowance query', () => {
    const node = parseFilter('(&(uid=jdoe)(|(!(caccn=*))(cacexempt=*)(cacemergency>=20261127182814Z)))');
    assert.deepEqual(node, {
      type: 'and',
      filters: [
        { type: 'equality', attribute: 'uid', value: Buffer.from('jdoe') },
        {
          type: 'or',
          filters: [
            { type: 'not', filter: { type: 'present', attribute: 'caccn' } },
            { type: 'present', attribute: 'cacexempt' },
            { type: 'greaterOrEqual', attribute: 'cacemergency', value: Buffer.from('20261127182814Z') },
          ],
        },
      ],
    });
  });

  test('decodes escapes to octets and splits substrings on unescaped stars only', () => {
    assert.deepEqual(parseFilter('(cn=J\\c3\\bc*\\2a*rgen)'), {
      type: 'substrings',
      attribute: 'cn',
      initial: Buffer.from('Jü'),
      any: [Buffer.from('*')],
      final: Buffer.from('rgen'),
    });
    assert.deepEqual(parseFilter('(cn=*x)'), { type: 'substrings', attribute: 'cn', initial: null, any: [], final: Buffer.from('x') });
  });

  test('keeps binary escapes as raw bytes', () => {
    assert.deepEqual(equalityValue('(objectGUID=\\00\\ff\\FE)'), Buffer.from([0x00, 0xff, 0xfe]));
  });

  test('parses extensible matches', () => {
    assert.deepEqual(parseFilter('(cn:dn:2.5.13.2:=x)'), {
      type: 'extensible',
      attribute: 'cn',
      rule: '2.5.13.2',
      dnAttributes: true,
      value: Buffer.from('x'),
    });
  });
});

describe('generalizedTime', () => {
  test('formats UTC as YYYYMMDDHHMMSS.0Z (the form Samba AD orders correctly too)', () => {
    assert.equal(generalizedTime(new Date('2026-11-27T18:28:14.999Z')), '20261127182814.0Z');
    assert.equal(generalizedTime(new Date('2001-02-03T04:05:06Z')), '20010203040506.0Z');
  });

  test('uses UTC whatever the local time zone', () => {
    assert.equal(generalizedTime(new Date('2026-12-31T23:59:59-05:00')), '20270101045959.0Z');
  });

  test('sorts like the dates it encodes', () => {
    const a = generalizedTime(new Date('2026-01-09T23:00:00Z'));
    const b = generalizedTime(new Date('2026-01-10T01:00:00Z'));
    assert.ok(a < b);
  });

  test('refuses an invalid date', () => {
    assert.throws(() => generalizedTime(new Date('nope')), RangeError);
  });
});
