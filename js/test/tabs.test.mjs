// Two tabs of one origin with the same client: one connection, each operation sent once; the
// owner tab closes mid-sync and the other takes over without losing anything.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

async function tab(context, opts, sockets) {
  const page = await openPage(context, env.server.url)
  // Open sockets of live tabs (a closed tab's socket dies with it).
  const mine = new Set()
  page.on('websocket', (ws) => {
    mine.add(ws)
    ws.on('close', () => mine.delete(ws))
  })
  sockets.tabs.add(mine)
  page.on('close', () => sockets.tabs.delete(mine))
  await page.evaluate(async ({ url, t, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId: t, clientId: 'shared', getToken: () => token })
  }, opts)
  return page
}

const owner = (page) => page.evaluate(() => client.isOwner)

test('two tabs share one connection; closing the owner mid-sync loses nothing', async () => {
  const t = `t-${Math.random().toString(36).slice(2, 10)}`
  const token = env.server.token(t, 'ann')
  const opts = { url: env.server.url, t, token }
  const context = await env.browser.newContext()
  const sockets = { tabs: new Set(), get open() { return [...this.tabs].reduce((n, m) => n + m.size, 0) } }
  const a = await tab(context, opts, sockets)
  await a.waitForFunction(() => client.status === 'live')
  const b = await tab(context, opts, sockets)
  assert.equal(await owner(a), true)
  assert.equal(await owner(b), false)

  // Both tabs write; only the owner talks to the server.
  await Promise.all([
    a.evaluate(() => Promise.all(Array.from({ length: 50 }, (_, i) => client.mutate('todo', `a${i}`, { n: i })))),
    b.evaluate(() => Promise.all(Array.from({ length: 50 }, (_, i) => client.mutate('todo', `b${i}`, { n: i })))),
  ])
  assert.equal(await b.evaluate(() => client.get('todo', 'b7')?.n), 7, "the follower sees its own write at once")
  await a.evaluate(() => client.settled())
  await b.waitForFunction(() => client.query('todo').length === 100 && client.pendingCount === 0)
  assert.equal(sockets.open, 1, 'one WebSocket for both tabs')

  // Offline, the owner queues 300 more and its tab closes before they are sent.
  await context.setOffline(true)
  await a.evaluate(() => Promise.all(Array.from({ length: 300 }, (_, i) => client.mutate('todo', `late${i}`, { n: i }))))
  await a.close()
  await b.waitForFunction(() => client.isOwner)
  await context.setOffline(false)
  await b.evaluate(() => client.settled(60_000))

  // Online, a new owner tab queues 300 and closes while they are being pushed: some batches
  // reached the server, some did not, one may have been in flight.
  const c = await tab(context, opts, sockets)
  await b.evaluate(() => Promise.all(Array.from({ length: 300 }, (_, i) => client.mutate('todo', `mid${i}`, { n: i }))))
  await b.waitForFunction(() => client.pendingCount < 300)
  await b.close()
  await c.waitForFunction(() => client.isOwner)
  await c.evaluate(() => client.settled(60_000))

  const events = await env.server.events(token)
  const ops = events.map((e) => e.payload.operationId)
  assert.equal(events.length, 700, 'every operation reached the server')
  assert.equal(new Set(ops).size, 700, 'none twice')
  await c.waitForFunction(() => client.query('todo').length === 700)
  assert.equal(sockets.open, 1)
  await context.close()
})
