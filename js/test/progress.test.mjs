// First-sync progress: a client opening a tenant with many entities reports how far it has come
// (`client.on('progress', …)`), instead of a silent wait.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

test('a first sync of 2,500 entities reports its progress page by page', async () => {
  const t = `t-${Math.random().toString(36).slice(2, 10)}`
  const token = env.server.token(t, 'writer')
  for (let batch = 0; batch < 5; batch++) {
    const operations = Array.from({ length: 500 }, (_, i) => {
      const n = batch * 500 + i
      return {
        operationId: `seed-${n}`, clientId: 'seeder', clientSeq: n + 1, tenantId: t, entityType: 'todo',
        entityId: `t${n}`, operationType: 'CREATE', payload: { n }, timestamp: new Date().toISOString(),
        vectorClock: { seeder: n + 1 },
      }
    })
    await env.server.api('POST', '/api/reconciliation/reconcile', token, { requestId: `seed-${batch}`, clientId: 'seeder', tenantId: t, operations })
  }
  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  const reports = await page.evaluate(async ({ url, tenantId, token }) => {
    const client = await pf2.createSyncClient({ url, tenantId, clientId: 'fresh', getToken: () => token })
    // Registered before the client's first turn: its connection opens after this task.
    const reports = []
    const done = new Promise((resolve) =>
      client.on('progress', (p) => {
        reports.push(p)
        if (p.received === p.total) resolve()
      }),
    )
    await done
    return { reports, count: client.query('todo').length }
  }, { url: env.server.url, tenantId: t, token })
  assert.equal(reports.count, 2500)
  const { reports: r } = reports
  assert.ok(r.length >= 2, JSON.stringify(r))
  assert.ok(r.every((p) => p.total === 2500), JSON.stringify(r))
  assert.deepEqual(r.map((p) => p.received), [...r.map((p) => p.received)].sort((a, b) => a - b), 'received only grows')
  assert.deepEqual(r.at(-1), { received: 2500, total: 2500 })
  await context.close()
})
