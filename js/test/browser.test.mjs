// The packed @pf2/sync tarball in headless Chromium against a real sync-env.server.
// Run: node --test test/ (make test runs it after building the package).
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`

test('offline: 1,000 mutations survive a reload and reach the server exactly once', async () => {
  const t = tenant()
  const token = env.server.token(t, 'alice')
  const context = await env.browser.newContext()
  const opts = { url: env.server.url, tenantId: t, clientId: 'laptop', token }

  // Offline from the start: everything queues in IndexedDB.
  let page = await openPage(context, env.server.url)
  await context.setOffline(true)
  const queued = await page.evaluate(async ({ url, tenantId, clientId, token }) => {
    const client = await pf2.createSyncClient({ url, tenantId, clientId, getToken: () => token })
    if (client.status !== 'offline') throw new Error(`status ${client.status}`)
    await Promise.all(
      Array.from({ length: 1000 }, (_, i) => client.mutate('todo', `t${i}`, { title: `item ${i}`, n: i })),
    )
    await client.mutate('todo', 't7', { done: true }) // an update on top, still offline
    return { pending: client.pendingCount, t7: client.get('todo', 't7') }
  }, opts)
  assert.equal(queued.pending, 1001)
  assert.deepEqual(queued.t7, { title: 'item 7', n: 7, done: true })
  assert.equal((await env.server.events(token)).length, 0, 'nothing reached the server while offline')

  // The tab goes away; a new one loads the page (the network is needed for that) and starts
  // offline again: the queue is still there.
  await page.close()
  await context.setOffline(false)
  page = await openPage(context, env.server.url)
  await context.setOffline(true)
  const recovered = await page.evaluate(async ({ url, tenantId, clientId, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId, getToken: () => token })
    return { pending: client.pendingCount, count: client.query('todo').length, status: client.status }
  }, opts)
  assert.deepEqual(recovered, { pending: 1001, count: 1000, status: 'offline' })

  // Back online: the browser's `online` event connects, the queue drains.
  await context.setOffline(false)
  const synced = await page.evaluate(async () => {
    await client.settled(60_000)
    return { pending: client.pendingCount, status: client.status }
  })
  assert.equal(synced.pending, 0)
  assert.equal(synced.status, 'live')

  // The server holds all 1,000, each created once (and t7 updated once).
  const events = await env.server.events(token)
  const created = events.filter((e) => e.eventType === 'todo.created')
  const updated = events.filter((e) => e.eventType === 'todo.updated')
  assert.equal(created.length, 1000)
  assert.equal(new Set(created.map((e) => e.payload.entity.entityId)).size, 1000)
  assert.equal(updated.length, 1)
  const ops = events.map((e) => e.payload.operationId)
  assert.equal(new Set(ops).size, 1001, 'one event per operation: none applied twice')
  assert.ok(events.every((e) => e.payload.clientId === 'laptop'))
  const t7 = await env.server.api('GET', '/api/reconciliation/snapshot/todo/t7', token)
  assert.deepEqual(t7.data, { title: 'item 7', n: 7, done: true })
  await context.close()
})
