// User ids from directory attributes (SPEC §2.1): text as is; objectGUID, objectSid and
// other binary values written as text that two different values can never share.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { guidText, sidText, userIdText } from '../shared/directory/user-id.ts';

// objectGUID and objectSid of one Samba AD user, as `samba-tool user show` decodes them and LDAP sends them.
const GUID_B64 = 'r1jazdU1iEavesifLsbw2A==';
const SID_B64 = 'AQUAAAAAAAUVAAAAfnJdjPJnnf938L/9TgQAAA==';

describe('userIdText', () => {
  test('objectGUID in the standard GUID form (first three fields little-endian)', () => {
    const raw = Buffer.from(GUID_B64, 'base64');
    assert.equal(userIdText('objectGUID', raw), 'cdda58af-35d5-4688-af7a-c89f2ec6f0d8');
    assert.equal(guidText(Buffer.from('00112233445566778899aabbccddeeff', 'hex')), '33221100-5544-7766-8899-aabbccddeeff');
    // The worked example of SPEC §2.1.
    assert.equal(guidText(Buffer.from('e004253f894fd3119a0c0305e82c3301', 'hex')), '3f2504e0-4f89-11d3-9a0c-0305e82c3301');
  });

  test('objectSid as S-1-5-21-...', () => {
    const raw = Buffer.from(SID_B64, 'base64');
    assert.equal(userIdText('objectSid', raw), 'S-1-5-21-2354934398-4288505842-4257214583-1102');
    assert.equal(userIdText('OBJECTSID', raw), 'S-1-5-21-2354934398-4288505842-4257214583-1102', 'attribute names are case-insensitive');
    assert.equal(sidText(Buffer.from('010100000000000512000000', 'hex')), 'S-1-5-18');
  });

  test('a binary value that happens to be valid UTF-8 (ldapts hands it over as a string) keeps its bytes', () => {
    const raw = Buffer.from('0041004200430044004500460047004800', 'hex').subarray(0, 16);
    assert.equal(userIdText('objectGUID', raw.toString('utf8')), guidText(raw));
    // Two GUIDs that differ only in a byte a lossy decoding would hide.
    const a = Buffer.from('41414141414141414141414141414100', 'hex');
    const b = Buffer.from('41414141414141414141414141414101', 'hex');
    assert.notEqual(userIdText('objectGUID', a.toString('utf8')), userIdText('objectGUID', b.toString('utf8')));
  });

  test('other binary values as uppercase hex; text values unchanged', () => {
    assert.equal(userIdText('msExchMailboxGuid', Buffer.from([0xde, 0xad, 0xbe, 0xef])), 'DEADBEEF');
    assert.equal(userIdText('employeeNumber', 'a\u0000b'), '610062', 'NUL makes a value binary');
    assert.equal(userIdText('sAMAccountName', 'asmith'), 'asmith');
    assert.equal(userIdText('uid', 'jürgen'), 'jürgen');
    assert.equal(userIdText('entryUUID', '4f1e8c2a-1b7e-103f-8a4e-7d6f1c2b3a4d'), '4f1e8c2a-1b7e-103f-8a4e-7d6f1c2b3a4d');
  });

  test('an objectGUID or objectSid of the wrong shape falls back to hex, never to garbled text', () => {
    assert.equal(userIdText('objectGUID', Buffer.from([1, 2, 3])), '010203');
    assert.equal(userIdText('objectSid', Buffer.from('0105000000000005150000', 'hex')), '0105000000000005150000');
    assert.equal(sidText(Buffer.from('02010000000000050000000012', 'hex')), null);
  });
});
