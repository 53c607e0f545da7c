// Two browsers converging, a manual conflict through the inbox, and Class D over REST only.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser({ env: { PF2_STRATEGIES: 'note=manual' } })

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`

/** A browser context with a connected client as `window.client`. */
async function connected(t, clientId, token) {
  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  const frames = []
  page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))))
  await page.evaluate(async ({ url, t, clientId, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId: t, clientId, getToken: () => token })
    await new Promise((resolve) => {
      if (client.status === 'live') return resolve()
      const off = client.on('status', (s) => s === 'live' && (off(), resolve()))
    })
  }, { url: env.server.url, t, clientId, token })
  return { context, page, frames }
}

const view = (page, type) => page.evaluate((type) => client.query(type), type)

async function serverView(type, token) {
  const items = []
  for (let cursor = ''; ; ) {
    const page = await env.server.api('GET', `/api/reconciliation/snapshot/${type}?limit=500${cursor ? `&cursor=${cursor}` : ''}`, token)
    items.push(...page.items.map((i) => ({ id: i.entityId, value: i.data })))
    if (!page.nextCursor) return items
    cursor = encodeURIComponent(page.nextCursor)
  }
}

/** Wait until the page's local view of `type` equals `expected`. */
async function until(page, type, expected) {
  await page.waitForFunction(
    ({ type, expected }) => JSON.stringify(client.query(type)) === expected,
    { type, expected: JSON.stringify(expected) },
    { timeout: 30_000 },
  )
}

test('two browsers edit the same entities offline and converge to the server state', async () => {
  const t = tenant()
  const a = await connected(t, 'browser-a', env.server.token(t, 'ann'))
  const b = await connected(t, 'browser-b', env.server.token(t, 'bob'))
  const token = env.server.token(t, 'checker')

  await a.page.evaluate(async () => {
    await Promise.all(Array.from({ length: 20 }, (_, i) => client.mutate('todo', `x${i}`, { title: `todo ${i}`, done: false })))
    await client.settled()
  })
  await until(b.page, 'todo', await serverView('todo', token))

  // Both go offline and edit the same entities, then come back.
  await a.context.setOffline(true)
  await b.context.setOffline(true)
  await a.page.evaluate(async () => {
    for (let i = 0; i < 10; i++) await client.mutate('todo', `x${i}`, { title: `A ${i}` })
    await client.mutate('todo', 'x19', null)
  })
  await b.page.evaluate(async () => {
    for (let i = 0; i < 10; i++) await client.mutate('todo', `x${i}`, { title: `B ${i}` })
    await client.mutate('todo', 'x5', { done: true })
    await client.mutate('todo', 'b-only', { title: 'made by b' })
  })
  await a.context.setOffline(false)
  await b.context.setOffline(false)
  for (const p of [a.page, b.page]) await p.evaluate(() => client.settled(30_000))

  const expected = await serverView('todo', token)
  await until(a.page, 'todo', expected)
  await until(b.page, 'todo', expected)
  assert.equal(expected.length, 20, '20 made, x19 deleted, b-only added')
  assert.ok(!expected.some((e) => e.id === 'x19'))
  // Field merge (the default): x5 keeps one title and B's `done`.
  const x5 = expected.find((e) => e.id === 'x5').value
  assert.equal(x5.done, true)
  assert.ok(['A 5', 'B 5'].includes(x5.title))
  assert.deepEqual(await view(a.page, 'todo'), await view(b.page, 'todo'))
  await a.context.close()
  await b.context.close()
})

test('a manual-strategy conflict surfaces in conflicts.list() and resolves', async () => {
  const t = tenant()
  const a = await connected(t, 'desk', env.server.token(t, 'ann'))
  const b = await connected(t, 'phone', env.server.token(t, 'bob'))
  await a.page.evaluate(async () => {
    await client.mutate('note', 'n1', { text: 'first draft' })
    await client.settled()
  })
  await b.page.waitForFunction(() => client.get('note', 'n1') !== undefined)

  // Concurrent edits of the same field from the same base.
  await a.context.setOffline(true)
  await b.context.setOffline(true)
  await a.page.evaluate(() => client.mutate('note', 'n1', { text: 'desk version' }))
  await b.page.evaluate(() => client.mutate('note', 'n1', { text: 'phone version' }))
  await a.context.setOffline(false)
  await a.page.evaluate(() => client.settled())
  await b.context.setOffline(false)
  await b.page.evaluate(() => client.settled())

  const open = await b.page.evaluate(() => client.conflicts.list())
  assert.equal(open.length, 1, JSON.stringify(open))
  assert.equal(open[0].entityId, 'n1')
  assert.deepEqual(open[0].clientState, { text: 'phone version' })
  await b.page.evaluate((id) => client.conflicts.resolve(id, { merged: { text: 'desk + phone' } }), open[0].conflictId)
  assert.deepEqual(await b.page.evaluate(() => client.conflicts.list()), [])
  for (const p of [a.page, b.page]) {
    await p.waitForFunction(() => client.get('note', 'n1')?.text === 'desk + phone', null, { timeout: 30_000 })
  }
  await a.context.close()
  await b.context.close()
})

test('a Class D transaction goes over REST, resolves on confirmation, never touches the socket', async () => {
  const t = tenant()
  const a = await connected(t, 'till', env.server.token(t, 'ann'))
  const result = await a.page.evaluate(() =>
    client.transact('payment.create', { amount: 4200, currency: 'EUR' }, { idempotencyKey: 'order-17' }),
  )
  assert.equal(result.status, 'confirmed')
  // The same key again: the same transaction, not a second one.
  const again = await a.page.evaluate(() =>
    client.transact('payment.create', { amount: 4200, currency: 'EUR' }, { idempotencyKey: 'order-17' }),
  )
  assert.equal(again.transactionId, result.transactionId)
  // A different body under the same key is refused, with the server's code.
  const refused = await a.page.evaluate(() =>
    client.transact('payment.create', { amount: 1 }, { idempotencyKey: 'order-17' }).then(
      () => 'accepted',
      (e) => e.code,
    ),
  )
  assert.equal(refused, 'IDEMPOTENCY_MISMATCH')
  assert.ok(a.frames.length > 0, 'the socket was in use')
  assert.ok(!a.frames.some((f) => f.includes('payment') || f.includes('order-17')), 'nothing of it on the socket')
  await a.context.close()
})

test('subscribe from an event id replays the log in order, then follows it live', async () => {
  const t = tenant()
  const a = await connected(t, 'auditor', env.server.token(t, 'ann'))
  await a.page.evaluate(async () => {
    await Promise.all(Array.from({ length: 5 }, (_, i) => client.mutate('order', `o${i}`, { total: i })))
    await client.settled()
    window.got = []
    client.subscribe('order.*', (e) => got.push(e.sequence), { fromEventId: 0 })
    await client.mutate('invoice', 'i1', { total: 1 }) // not matched
    await client.mutate('order', 'o9', { total: 9 })
  })
  await a.page.waitForFunction(() => got.length === 6, null, { timeout: 30_000 })
  const got = await a.page.evaluate(() => got)
  const orders = (await env.server.events(env.server.token(t, 'x'))).filter((e) => e.eventType.startsWith('order.'))
  assert.deepEqual(got, orders.map((e) => e.sequence))
  await a.context.close()
})
