// People typing at a human pace, under the server's shipped limits (100 realtime messages a
// minute per connection; 60 polling-lane requests a minute per user): two users type into one
// shared document for two minutes at 7 characters a second, with a presence update on every
// keystroke — over WebSocket, and with the WebSocket blocked (the long-polling fallback).
// Nothing here lifts a limit.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { openPage, until, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`
const KEYS = 840 // two minutes at 7 a second
const EVERY_MS = Math.round(1000 / 7)

/** A user's page: its client, the shared document (a text per user), and a record of when
 * each of its own keystrokes was made and each of the other's appeared. */
async function user(name, other, t, { blocked }) {
  const page = await openPage(await env.browser.newContext(), env.server.url)
  const seen = { r429: 0, wsCloses: 0, requests: {} }
  page.on('response', (r) => r.status() === 429 && seen.r429++)
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname
    if (path.startsWith('/api/')) seen.requests[path] = (seen.requests[path] ?? 0) + 1
  })
  if (blocked) await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close())
  else page.on('websocket', (ws) => ws.on('close', () => seen.wsCloses++))
  await page.evaluate(
    async ({ url, tenantId, name, other, token, blocked }) => {
      window.client = await pf2.createSyncClient({
        url, tenantId, clientId: name, getToken: () => token, ...(blocked ? { wsFailuresBeforeDegraded: 1 } : {}),
      })
      window.doc = await client.doc('notes', { init: (d) => { d.putText(['alice'], ''); d.putText(['bob'], '') } })
      window.typed = []
      window.arrived = []
      window.statuses = []
      client.on('status', (s) => statuses.push(s))
      client.rooms.join('notes')
      doc.on('change', () => {
        const n = doc.text([other]).length
        for (let i = arrived.length; i < n; i++) arrived.push(Date.now())
      })
      window.type = () =>
        new Promise((resolve) => {
          let k = 0
          const timer = setInterval(() => {
            doc.change((d) => d.splice([name], k, 0, 'x'))
            typed.push(Date.now())
            client.presence.set({ status: 'online', metadata: { cursor: k }, roomId: 'notes' })
            if (++k === KEYS) {
              clearInterval(timer)
              resolve()
            }
          }, EVERY_MS)
        })
    },
    { url: env.server.url, tenantId: t, name, other, token: env.server.token(t, name), blocked },
  )
  await page.evaluate(({ KEYS, EVERY_MS }) => Object.assign(window, { KEYS, EVERY_MS }), { KEYS, EVERY_MS })
  return { page, seen }
}

/** Each of `from`'s keystrokes on `to`'s screen: delays in ms, in keystroke order. */
async function delays(from, to) {
  const typed = await from.page.evaluate(() => typed)
  const arrived = await to.page.evaluate(() => arrived)
  return typed.map((t, i) => (arrived[i] ?? Infinity) - t)
}

const p90 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)]

async function typeTogether({ blocked }) {
  const t = tenant()
  const alice = await user('alice', 'bob', t, { blocked })
  const bob = await user('bob', 'alice', t, { blocked })
  const want = blocked ? 'degraded' : 'live'
  for (const u of [alice, bob]) await until(want, async () => (await u.page.evaluate(() => client.status)) === want)
  await Promise.all([alice.page.evaluate(() => type()), bob.page.evaluate(() => type())])
  const stopped = Date.now()
  const text = (u) => u.page.evaluate(() => ({ alice: doc.text(['alice']).length, bob: doc.text(['bob']).length, heads: doc.heads().sort().join() }))
  await until('both screens hold every keystroke', async () => {
    const [a, b] = [await text(alice), await text(bob)]
    return (a.alice === KEYS && a.bob === KEYS && a.heads === b.heads) || { a, b }
  }, 60_000)
  const converged = Date.now() - stopped
  const ab = await delays(alice, bob)
  const ba = await delays(bob, alice)
  const statuses = await Promise.all([alice, bob].map((u) => u.page.evaluate(() => statuses)))
  const report = {
    p90AliceToBob: p90(ab), p90BobToAlice: p90(ba), convergedMs: converged,
    r429: alice.seen.r429 + bob.seen.r429, wsCloses: alice.seen.wsCloses + bob.seen.wsCloses,
    statuses: statuses.map((s) => s.join(' ')),
    requests: [alice.seen.requests, bob.seen.requests],
  }
  console.log(`typing (${blocked ? 'WebSocket blocked' : 'WebSocket'}):`, JSON.stringify(report))
  for (const u of [alice, bob]) await u.page.context().close()
  return report
}

test('two people type for two minutes at 7 keys a second with presence on every key: no close, no 429, p90 within 1 s', async () => {
  const r = await typeTogether({ blocked: false })
  assert.equal(r.wsCloses, 0, 'no socket closed')
  assert.ok(r.statuses.every((s) => !/live .*(connecting|offline|degraded)/.test(s)), `never left live: ${r.statuses}`)
  assert.equal(r.r429, 0, 'no HTTP 429')
  assert.ok(r.p90AliceToBob <= 1000 && r.p90BobToAlice <= 1000, `p90 within 1 s: ${JSON.stringify(r)}`)
})

test('the same with the WebSocket blocked: no 429, p90 within 8 s, converged within 10 s after the typing stops', async () => {
  const r = await typeTogether({ blocked: true })
  assert.equal(r.r429, 0, 'no HTTP 429')
  assert.ok(r.p90AliceToBob <= 8000 && r.p90BobToAlice <= 8000, `p90 within 8 s: ${JSON.stringify(r)}`)
  assert.ok(r.convergedMs <= 10_000, `converged within 10 s: ${JSON.stringify(r)}`)
})
