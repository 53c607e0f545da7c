// The operators' page (/ops, served by the server) in Chromium: an operator pastes an admin
// token, sees the tenant's health, live connections, consumer groups and audit chain, finds a
// dead-lettered event by filtering, edits its payload and reprocesses it — and a consumer of its
// group receives it again, with the edited payload. Without the admin role the page shows nothing.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { launchBrowser, startServer, until } from './harness.mjs'

let server, browser
before(async () => {
  server = await startServer()
  browser = await launchBrowser()
})
after(async () => {
  await browser?.close()
  await server?.stop()
})

const text = (page, sel) => page.locator(sel).innerText()

test('an operator finds a dead letter on /ops, edits and reprocesses it; the consumer receives it again', async () => {
  const t = `t-${Math.random().toString(36).slice(2, 10)}`
  const svc = server.token(t, 'billing', 3600, { roles: ['service'] })
  const admin = server.token(t, 'ops-alice', 3600, { roles: ['admin'] })
  const { api } = server
  // A group that dead-letters an event after one failed delivery.
  await api('PUT', '/api/events/subscriptions/invoices', svc, {
    kind: 'group', eventTypes: ['invoice.*'], maxDeliveries: 1, startFrom: 'earliest',
  })
  await api('POST', '/api/events', svc, { events: [
    { eventType: 'invoice.created', payload: { invoice: 'A-1', amount: 5 } },
    { eventType: 'invoice.created', payload: { invoice: 'B-2', amount: -1 } },
  ] })
  const claim = () => api('POST', '/api/events/subscriptions/invoices/claim', svc, { consumer: 'worker-1', max: 10 })
  const first = await claim()
  assert.equal(first.deliveries.length, 2)
  const [good, bad] = first.deliveries
  await api('POST', '/api/events/subscriptions/invoices/ack', svc, { deliveries: [{ sequence: good.event.sequence, leaseToken: good.leaseToken }] })
  const nacked = await api('POST', '/api/events/subscriptions/invoices/nack', svc, {
    sequence: bad.event.sequence, leaseToken: bad.leaseToken, reason: 'negative amount',
  })
  assert.equal(nacked.status, 'dead_lettered')

  const context = await browser.newContext()
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error('[page error]', e))
  await page.goto(`${server.url}/ops`)
  // Health is public; the rest waits for a token.
  await until('health', async () => (await text(page, '#health')).includes('database'))
  // A token without the admin role sees nothing of the tenant.
  await page.fill('#token', server.token(t, 'mallory'))
  await page.click('#connect')
  await until('the refusal', async () => (await text(page, '#message')).includes('no admin role'))
  assert.equal((await text(page, '#dlq')).trim(), '')

  await page.fill('#token', admin)
  await page.click('#connect')
  await until('the groups', async () => (await text(page, '#groups')).includes('invoices'))
  const groupRow = await text(page, '#groups')
  assert.match(groupRow, /invoices\s+group/)
  // The dead letter, found by filtering on its group and type.
  await page.fill('#dlq-subscription', 'invoices')
  await page.fill('#dlq-type', 'invoice.*')
  await page.click('#dlq-search')
  await until('the dead letter', async () => (await text(page, '#dlq')).includes('negative amount'))
  const dead = (await api('GET', '/api/events/dlq?subscription=invoices', svc)).deadLetters
  assert.equal(dead.length, 1)
  await page.click(`#view-${dead[0].dlqId}`)
  await until('its payload', async () => (await page.inputValue('#dlq-payload')).includes('B-2'))
  assert.match(await text(page, '#dlq-original'), /"amount": -1/)
  // Fix the payload, then send it back to its group.
  await page.fill('#dlq-payload', JSON.stringify({ invoice: 'B-2', amount: 1 }))
  await page.click('#dlq-save')
  await until('saved', async () => (await text(page, '#message')).startsWith('Saved'))
  await page.click('#dlq-reprocess')
  await until('reprocessed', async () => (await text(page, '#message')).startsWith('Sent'))

  // The consumer receives it again, as the operator left it.
  const again = await claim()
  assert.equal(again.deliveries.length, 1)
  assert.equal(again.deliveries[0].event.sequence, bad.event.sequence)
  assert.deepEqual(again.deliveries[0].event.payload, { invoice: 'B-2', amount: 1 })

  // Each action is in the audit log, whose chains verify, and the page shows both.
  await page.click('#dlq-search')
  await until('the audit entries', async () => {
    const a = await text(page, '#audit')
    return a.includes('dlq.edit') && a.includes('dlq.reprocess') ? true : a
  })
  assert.match(await text(page, '#chains'), /verified/)
  assert.doesNotMatch(await text(page, '#chains'), /BROKEN/)
  await context.close()
})

test('the page lists the tenant’s live sockets and rooms', async () => {
  const t = `t-${Math.random().toString(36).slice(2, 10)}`
  const admin = server.token(t, 'ops-alice', 3600, { roles: ['admin'] })
  const user = server.token(t, 'ann')
  // A live socket in a room, opened by a page of the server's origin, as an app would.
  const context = await browser.newContext()
  const app = await context.newPage()
  await app.goto(`${server.url}/health`)
  await app.evaluate(async ({ user }) => {
    const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/v1/ws?token=${user}&clientId=ann-laptop`)
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject })
    ws.send(JSON.stringify({ v: 1, type: 'join_room', roomId: 'standup' }))
    window.ws = ws
  }, { user })
  const page = await context.newPage()
  await page.goto(`${server.url}/ops`)
  await page.fill('#token', admin)
  await page.click('#connect')
  await until('the socket', async () => {
    const c = await text(page, '#connections')
    const r = await text(page, '#rooms')
    return c.includes('ann-laptop') && r.includes('standup') ? true : [c, r]
  })
  await context.close()
})
