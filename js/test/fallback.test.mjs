// WebSocket blocked → the client falls back to HTTP long-polling and still syncs and receives
// every event in order; WebSocket allowed again → back to live, resuming without a gap.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

test('WebSocket blocked: long-polling delivers events in order; unblocked: live again', async () => {
  const t = `t-${Math.random().toString(36).slice(2, 10)}`
  const token = env.server.token(t, 'ann')
  const writer = env.server.token(t, 'service')
  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  let blocked = true
  await page.routeWebSocket(/\/v1\/ws/, (ws) => (blocked ? ws.close() : ws.connectToServer()))

  await page.evaluate(async ({ url, t, token }) => {
    window.seen = []
    window.client = await pf2.createSyncClient({
      url, tenantId: t, clientId: 'kiosk', getToken: () => token,
      wsFailuresBeforeDegraded: 2, websocketRetryMs: 3_000,
    })
    client.subscribe('todo.*', (e) => seen.push(e.sequence))
    await new Promise((resolve) => {
      const check = (s) => s === 'degraded' && (off(), resolve())
      const off = client.on('status', check)
      check(client.status)
    })
    // A change made while degraded travels as a REST reconcile.
    await client.mutate('todo', 'from-kiosk', { title: 'over HTTP' })
    await client.settled()
  }, { url: env.server.url, t, token })

  // Another writer makes 30 changes; the degraded client receives them by long-polling.
  const ops = Array.from({ length: 30 }, (_, i) => ({
    operationId: `svc-${i}`, clientId: 'service', clientSeq: i + 1, tenantId: t, entityType: 'todo',
    entityId: `s${i}`, operationType: 'CREATE', payload: { n: i }, timestamp: new Date().toISOString(),
    vectorClock: { service: i + 1 },
  }))
  await env.server.api('POST', '/api/reconciliation/reconcile', writer, { requestId: 'svc-batch', clientId: 'service', tenantId: t, operations: ops })
  await page.waitForFunction(() => seen.length === 31, null, { timeout: 30_000 })
  const seen = await page.evaluate(() => seen)
  assert.deepEqual(seen, [...seen].sort((a, b) => a - b), 'in order')
  assert.equal(new Set(seen).size, 31, 'each once')
  assert.equal(await page.evaluate(() => client.status), 'degraded')
  // The data arrived too (pulled over HTTP).
  await page.waitForFunction(() => client.query('todo').length === 31, null, { timeout: 30_000 })

  // WebSocket allowed again: the client returns to it and events keep flowing, no gap.
  blocked = false
  await page.waitForFunction(() => client.status === 'live', null, { timeout: 30_000 })
  await env.server.api('POST', '/api/reconciliation/reconcile', writer, {
    requestId: 'svc-batch-2', clientId: 'service', tenantId: t,
    operations: [{ ...ops[0], operationId: 'svc-30', clientSeq: 31, entityId: 's30', vectorClock: { service: 31 } }],
  })
  await page.waitForFunction(() => seen.length === 32, null, { timeout: 30_000 })
  const all = await page.evaluate(() => seen)
  assert.equal(new Set(all).size, 32)
  assert.deepEqual(all, [...all].sort((a, b) => a - b))
  const server_events = await env.server.events(token)
  assert.deepEqual(all, server_events.map((e) => e.sequence))
  await context.close()
})
