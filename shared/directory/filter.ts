/**
 * LDAP query templates (SPEC 2.2): token substitution with RFC 4515 escaping,
 * template validation for the API, and the GeneralizedTime used by `{t}`.
 *
 * Pure module: no I/O. The token names and their values are in tokens.ts.
 */

import { QUERY_TOKENS, type QueryToken, type TokenValues } from './tokens.ts';

const TOKEN_SET: ReadonlySet<string> = new Set(QUERY_TOKENS);

/** A token is `{name}`; braces never nest. Literal braces must be written `\7b` / `\7d`. */
const TOKEN_RE = /\{([^{}]*)\}/g;

function isQueryToken(name: string): name is QueryToken {
  return TOKEN_SET.has(name);
}

/**
 * Escapes a value for use inside an RFC 4515 assertion value.
 *
 * Escaped as `\xx` with LOWERCASE hex: `*`, `(`, `)`, `\`, NUL (as RFC 4515
 * requires), every other ASCII control character and DEL (allowed raw by the
 * RFC, escaped so that filters stay printable in logs), and every byte of the
 * UTF-8 encoding of non-ASCII characters. The result is therefore pure
 * printable ASCII and can never change the shape of the filter it is put in.
 */
export function escapeFilterValue(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const mustEscape =
      byte < 0x20 || byte >= 0x7f || byte === 0x2a /* * */ || byte === 0x28 /* ( */ || byte === 0x29 /* ) */ || byte === 0x5c; /* \ */
    out += mustEscape ? '\\' + byte.toString(16).padStart(2, '0') : String.fromCharCode(byte);
  }
  return out;
}

/** Token names used in a template, in order of appearance, with duplicates. */
function tokensOf(template: string): string[] {
  return Array.from(template.matchAll(TOKEN_RE), (m) => m[1] ?? '');
}

/** Names inside `{...}` that are not query tokens (deduplicated, in order of appearance). */
export function unknownTokens(template: string): string[] {
  return [...new Set(tokensOf(template).filter((name) => !isQueryToken(name)))];
}

/**
 * Replaces every token by its escaped value. Returns null when any token used
 * has no value (missing, null or empty) or is unknown: the caller must then
 * treat the query as matching nothing, never run an empty or wildcard filter.
 */
export function renderFilter(template: string, values: TokenValues): string | null {
  let missing = false;
  const rendered = template.replace(TOKEN_RE, (_whole, name: string) => {
    const value = isQueryToken(name) ? values[name] : undefined;
    if (value === undefined || value === null || value === '') {
      missing = true;
      return '';
    }
    return escapeFilterValue(value);
  });
  return missing ? null : rendered;
}

/**
 * LDAP GeneralizedTime in UTC, second precision, with a zero fraction:
 * `YYYYMMDDHHMMSS.0Z` (SPEC 2.2). OpenLDAP, 389-ds and AD order this form
 * correctly; Samba's AD orders the form without a fraction wrongly
 * (`(msTSExpireDate>=20261201184313Z)` matches every value).
 */
export function generalizedTime(d: Date): string {
  if (Number.isNaN(d.getTime())) throw new RangeError('generalizedTime: invalid date');
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  return (
    p(d.getUTCFullYear(), 4) +
    p(d.getUTCMonth() + 1) +
    p(d.getUTCDate()) +
    p(d.getUTCHours()) +
    p(d.getUTCMinutes()) +
    p(d.getUTCSeconds()) +
    '.0Z'
  );
}

/**
 * Validates a query template as the API does when a profile is saved.
 * Returns an error message, or null when the template is acceptable.
 *
 * Tokens are replaced by an escaped dummy (`\78`) before parsing. An escape
 * sequence is only legal inside an assertion value, so a token placed where
 * it could alter the filter's structure (attribute name, matching rule,
 * operator) is reported as a syntax error.
 */
export function checkFilterTemplate(template: string): string | null {
  const unknown = unknownTokens(template);
  if (unknown.length > 0) {
    return `unknown token${unknown.length > 1 ? 's' : ''} ${unknown.map((t) => `{${t}}`).join(', ')}; known tokens: ${QUERY_TOKENS.map((t) => `{${t}}`).join(' ')}`;
  }
  const withDummies = template.replace(TOKEN_RE, '\\78');
  const stray = withDummies.search(/[{}]/);
  if (stray >= 0) {
    return `unmatched "${withDummies[stray]}" (write a literal brace as \\7b or \\7d)`;
  }
  try {
    parseFilter(withDummies);
    return null;
  } catch (err) {
    if (err instanceof FilterSyntaxError) return err.message;
    throw err;
  }
}

// ---------------------------------------------------------------------------
// RFC 4515 parser. Values are decoded to the exact octets the filter denotes
// (`\c3\bc` is the two bytes C3 BC, not two characters), so that whoever
// encodes the request can put those octets on the wire unchanged.

export type FilterNode =
  | { type: 'and' | 'or'; filters: FilterNode[] }
  | { type: 'not'; filter: FilterNode }
  | { type: 'equality' | 'approx' | 'greaterOrEqual' | 'lessOrEqual'; attribute: string; value: Buffer }
  | { type: 'present'; attribute: string }
  | { type: 'substrings'; attribute: string; initial: Buffer | null; any: Buffer[]; final: Buffer | null }
  | { type: 'extensible'; attribute: string | null; rule: string | null; dnAttributes: boolean; value: Buffer };

export class FilterSyntaxError extends Error {
  override name = 'FilterSyntaxError';
}

/**
 * Parses an RFC 4515 filter string. Throws {@link FilterSyntaxError}.
 * Absolute true/false filters `(&)` / `(|)` (RFC 4526) are refused: not
 * every directory supports them and they are never what an administrator means.
 */
export function parseFilter(filter: string): FilterNode {
  return new FilterParser(filter).parse();
}

const MAX_DEPTH = 64;

class FilterParser {
  private pos = 0;
  private readonly s: string;

  constructor(s: string) {
    this.s = s;
  }

  parse(): FilterNode {
    if (this.s.trim() === '') throw this.fail('the filter is empty');
    if (this.s[0] !== '(') throw this.fail('a filter must start with "("');
    const node = this.filter(0);
    if (this.pos !== this.s.length) throw this.fail('unexpected text after the end of the filter');
    return node;
  }

  private fail(message: string): FilterSyntaxError {
    return new FilterSyntaxError(`invalid LDAP filter at position ${this.pos}: ${message}`);
  }

  private peek(): string | undefined {
    return this.s[this.pos];
  }

  private expect(ch: string): void {
    if (this.s[this.pos] !== ch) {
      throw this.fail(this.pos >= this.s.length ? `expected "${ch}" but the filter ended (unbalanced parentheses?)` : `expected "${ch}"`);
    }
    this.pos++;
  }

  private filter(depth: number): FilterNode {
    // Deep nesting is never legitimate and must not exhaust the stack.
    if (depth > MAX_DEPTH) throw this.fail('filter nested too deeply');
    this.expect('(');
    let node: FilterNode;
    const c = this.peek();
    if (c === '&' || c === '|') {
      this.pos++;
      if (this.peek() !== '(') throw this.fail(`"${c}" needs at least one sub-filter`);
      const filters: FilterNode[] = [];
      while (this.peek() === '(') filters.push(this.filter(depth + 1));
      node = { type: c === '&' ? 'and' : 'or', filters };
    } else if (c === '!') {
      this.pos++;
      node = { type: 'not', filter: this.filter(depth + 1) };
    } else {
      node = this.item();
    }
    this.expect(')');
    return node;
  }

  private item(): FilterNode {
    // extensible without attribute: [":dn"] ":" matchingrule ":=" value
    if (this.peek() === ':') return this.extensible(null);
    const attribute = this.attributeDescription();
    const c = this.peek();
    if (c === ':') return this.extensible(attribute);
    if (c === '~' || c === '>' || c === '<') {
      this.pos++;
      this.expect('=');
      const value = this.value(false)[0] ?? Buffer.alloc(0);
      return { type: c === '~' ? 'approx' : c === '>' ? 'greaterOrEqual' : 'lessOrEqual', attribute, value };
    }
    this.expect('=');
    // Equality, presence ("=*") or substrings: value parts separated by unescaped "*".
    const parts = this.value(true);
    if (parts.length === 1) return { type: 'equality', attribute, value: parts[0] ?? Buffer.alloc(0) };
    if (parts.length === 2 && parts.every((p) => p.length === 0)) return { type: 'present', attribute };
    const initial = parts[0]?.length ? parts[0] : null;
    const last = parts[parts.length - 1];
    const final = last?.length ? last : null;
    const any = parts.slice(1, -1);
    if (any.some((p) => p.length === 0)) throw this.fail('"**" is not a valid substring pattern');
    return { type: 'substrings', attribute, initial, any, final };
  }

  /** After the attribute (if any): [":dn"] [":" matchingrule] ":=" assertionvalue. */
  private extensible(attribute: string | null): FilterNode {
    let dnAttributes = false;
    let rule: string | null = null;
    if (this.s.slice(this.pos, this.pos + 4).toLowerCase() === ':dn:') {
      dnAttributes = true;
      this.pos += 3;
    }
    if (this.s.startsWith(':=', this.pos)) {
      if (attribute === null) throw this.fail('an extensible match without attribute needs a matching rule');
      this.pos += 2;
    } else {
      this.expect(':');
      rule = this.oid('matching rule');
      this.expect(':');
      this.expect('=');
    }
    const value = this.value(false)[0] ?? Buffer.alloc(0);
    return { type: 'extensible', attribute, rule, dnAttributes, value };
  }

  /** attributedescription = attributetype *(";" option) */
  private attributeDescription(): string {
    const start = this.pos;
    this.oid('attribute');
    while (this.peek() === ';') {
      this.pos++;
      const m = /^[A-Za-z0-9-]+/.exec(this.s.slice(this.pos));
      if (!m) throw this.fail('empty attribute option');
      this.pos += m[0].length;
    }
    return this.s.slice(start, this.pos);
  }

  /** oid = descr / numericoid */
  private oid(what: string): string {
    const m = /^(?:[A-Za-z][A-Za-z0-9-]*|(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+)/.exec(this.s.slice(this.pos));
    if (!m) throw this.fail(`expected ${what} name`);
    this.pos += m[0].length;
    return m[0];
  }

  /**
   * Assertion value up to the closing ")", decoded to octets. With
   * `allowStar` (after a plain "=") unescaped `*` splits it into parts;
   * elsewhere a star is an error. Escapes must be `\` and two hex digits.
   */
  private value(allowStar: boolean): Buffer[] {
    const parts: Buffer[] = [];
    let bytes: number[] = [];
    while (this.pos < this.s.length && this.peek() !== ')') {
      const cp = this.s.codePointAt(this.pos) ?? 0;
      const ch = String.fromCodePoint(cp);
      if (ch === '(') throw this.fail('unescaped "(" in a value (write \\28)');
      if (ch === '\0') throw this.fail('NUL in a value (write \\00)');
      if (ch === '*') {
        if (!allowStar) throw this.fail('"*" is only allowed after "=" (write \\2a for a literal star)');
        parts.push(Buffer.from(bytes));
        bytes = [];
        this.pos++;
        continue;
      }
      if (ch === '\\') {
        const hex = this.s.slice(this.pos + 1, this.pos + 3);
        if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw this.fail('"\\" must be followed by two hex digits');
        bytes.push(Number.parseInt(hex, 16));
        this.pos += 3;
        continue;
      }
      bytes.push(...Buffer.from(ch, 'utf8'));
      this.pos += ch.length;
    }
    parts.push(Buffer.from(bytes));
    return parts;
  }
}
