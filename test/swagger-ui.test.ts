// Swagger UI end to end in a real browser: authorize with the bearer token, try
// `GET /v1/listeners` and see the listeners created through the API.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { ADMIN_TOKEN, bodies, startApi, type ApiHarness } from './helpers/api.ts';

const CHROMIUM = '/usr/bin/chromium';

describe('Swagger UI', () => {
  let api: ApiHarness;
  let browser: Browser | undefined;
  let baseUrl: string;

  before(async () => {
    // Never skip: a missing browser is a broken test environment (scripts/ensure-deps.sh installs it).
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is not installed: install the Debian package "chromium" (scripts/ensure-deps.sh does)`);
    api = await startApi();
    baseUrl = await api.app.listen({ host: '127.0.0.1', port: 0 });
    for (const [url, body] of [
      ['/v1/mail-flow-policies', bodies.policy('PLAIN')],
      ['/v1/listeners', bodies.listener('ui-submission', 3201)],
      ['/v1/listeners', bodies.listener('ui-relay', 3202)],
    ] as const) {
      assert.equal((await api.call('POST', url, body)).status, 201, url);
    }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await api?.close();
  });

  test('authorize, try GET /v1/listeners, see both listeners', async () => {
    assert.ok(browser);
    const page = await browser.newPage();
    await page.goto(`${baseUrl}/docs`);

    await page.locator('.auth-wrapper button.authorize').click();
    const dialog = page.locator('.dialog-ux .modal-ux');
    await dialog.locator('input').first().fill(ADMIN_TOKEN);
    await dialog.locator('button.authorize').click();
    await dialog.locator('button.btn-done').click();

    const operation = page.locator('#operations-listeners-listListeners');
    await operation.locator('.opblock-summary').first().click();
    await operation.locator('button.try-out__btn').click();
    await operation.locator('button.execute').click();

    const response = operation.locator('.live-responses-table .response .response-col_description pre.microlight').first();
    await response.waitFor({ timeout: 15_000 });
    const text = await response.innerText();
    assert.match(text, /"ui-submission"/);
    assert.match(text, /"ui-relay"/);
    const status = await operation.locator('.live-responses-table .response .response-col_status').first().innerText();
    assert.equal(status.trim(), '200');
  });
});
