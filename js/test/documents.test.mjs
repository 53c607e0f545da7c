// Collaborative documents (@pf2/sync/automerge) in headless Chromium against a real
// sync-server: two browsers edit one text offline and converge, through a server restart.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Automerge from '@automerge/automerge'
import { openPage, until, useServerAndBrowser } from './harness.mjs'

const env = useServerAndBrowser()

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`

/** A page with a client (`window.client`) and the document (`window.doc`). */
async function openDoc(context, opts) {
  const page = await openPage(context, env.server.url)
  await page.evaluate(async ({ url, tenantId, clientId, token, documentId }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId, getToken: () => token, autoConnect: false })
    window.doc = await client.doc(documentId)
    window.remoteChanges = 0
    doc.on('change', (e) => e.local || window.remoteChanges++)
  }, opts)
  return page
}

const state = (page) => page.evaluate(() => ({ text: doc.text(['text']), heads: doc.heads().sort(), status: client.status }))

test('two browsers edit one text offline, 1,000 edits each, and converge through a server restart', async () => {
  const t = tenant()
  const token = env.server.token(t, 'writer')
  const documentId = 'shared-notes'
  const [ctxA, ctxB] = [await env.browser.newContext(), await env.browser.newContext()]
  const opts = (clientId) => ({ url: env.server.url, tenantId: t, clientId, token, documentId })
  let a = await openDoc(ctxA, opts('alice'))
  const b = await openDoc(ctxB, opts('bob'))

  // Online: Alice creates the text; Bob receives it.
  await a.evaluate(() => {
    client.connect()
    doc.change((d) => d.putText(['text'], 'shared base'))
  })
  await b.evaluate(() => client.connect())
  await until('Bob to see the base text', async () => (await state(b)).text === 'shared base' || (await state(b)))

  // Offline, both: 1,000 single edits each at random places (70 % inserts, 30 % deletes).
  const edit = (seed) => {
    let x = seed
    const rnd = (n) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n)
    for (let i = 0; i < 1000; i++) {
      const len = doc.text(['text']).length
      if (len > 0 && rnd(10) < 3) doc.change((d) => d.splice(['text'], rnd(len), 1))
      else doc.change((d) => d.splice(['text'], rnd(len + 1), 0, String.fromCharCode(97 + rnd(26))))
    }
    return doc.flushed().then(() => doc.text(['text']))
  }
  await a.evaluate(() => client.disconnect())
  await b.evaluate(() => client.disconnect())
  const textA = await a.evaluate(edit, 1)
  const textB = await b.evaluate(edit, 2)
  assert.notEqual(textA, textB, 'the offline edits differ')
  assert.equal(await b.evaluate(() => remoteChanges), 1, 'nothing arrived while offline')

  // Alice's tab goes away while offline; a new one finds every edit in IndexedDB.
  await a.close()
  a = await openDoc(ctxA, opts('alice'))
  assert.equal((await state(a)).text, textA, 'the offline edits survived the reload')

  // Back online: Alice first; the server is killed and restarted while her sync may still be
  // in flight; then Bob. Both, and the server, end with the same document.
  await a.evaluate(() => client.connect())
  await until('Alice live', async () => (await state(a)).status === 'live')
  await env.server.restart()
  await b.evaluate(() => client.connect())
  const snapshot = async () => {
    try {
      return await env.server.api('GET', `/api/documents/${documentId}/snapshot`, token)
    } catch {
      return undefined // restarting
    }
  }
  await until('convergence', async () => {
    const [sa, sb, snap] = [await state(a), await state(b), await snapshot()]
    const server = snap?.heads?.slice().sort()
    return (sa.heads.join() === sb.heads.join() && sa.heads.join() === server?.join()) || { sa: sa.heads, sb: sb.heads, server }
  })
  const [sa, sb] = [await state(a), await state(b)]
  assert.equal(sa.text, sb.text, 'identical text in both browsers')
  assert.equal(sa.status, 'live')
  // The server's snapshot, read by a stock Automerge: the same text.
  const snap = await snapshot()
  const server = Automerge.load(new Uint8Array(Buffer.from(snap.save, 'base64')))
  assert.equal(server.text.toString(), sa.text, 'identical text on the server')
  assert.match(snap.checksum, /^sha256:[0-9a-f]{64}$/)
  await ctxA.close()
  await ctxB.close()
})

test('the documents module loads only with the first document, and bad edits change nothing', async () => {
  const t = tenant()
  const token = env.server.token(t, 'writer')
  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  const fetched = []
  page.on('request', (r) => fetched.push(new URL(r.url()).pathname))
  const result = await page.evaluate(async ({ url, tenantId, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'c1', getToken: () => token })
    await client.mutate('todo', 't1', { title: 'no documents yet' })
    const before = performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)
    const doc = await client.doc('d1')
    doc.change((d) => {
      d.put(['title'], 'Plan')
      d.put(['items'], [{ t: 'milk' }])
      d.putText(['body'], 'héllo 👋')
    })
    doc.change((d) => d.splice(['body'], 8, 0, '!')) // UTF-16: the emoji is two units
    const errors = []
    for (const bad of [
      (d) => d.splice(['body'], 99, 0, 'x'),
      (d) => d.put(['title', 'x'], 1),
      (d) => {
        d.put(['title'], 'changed, then undone')
        throw new Error('app error')
      },
    ]) {
      try {
        doc.change(bad)
      } catch (e) {
        errors.push(String(e.message ?? e))
      }
    }
    await doc.flushed()
    return { before, value: doc.value(), errors, again: (await client.doc('d1')) === doc }
  }, { url: env.server.url, tenantId: t, token })
  assert.ok(!result.before.some((p) => p.includes('pf2_automerge')), `not loaded before: ${result.before}`)
  assert.ok(fetched.some((p) => p.endsWith('pf2_automerge_bg.wasm')), 'loaded with the first document')
  assert.deepEqual(result.value, { title: 'Plan', items: [{ t: 'milk' }], body: 'héllo 👋!' })
  assert.equal(result.errors.length, 3)
  assert.match(result.errors[0], /past the end/)
  assert.match(result.errors[1], /not a map/)
  assert.equal(result.errors[2], 'app error')
  assert.ok(result.again, 'one handle per document')
  await context.close()
})

test('WebSocket blocked: a degraded client syncs its document over REST, both ways', async () => {
  const t = tenant()
  const token = env.server.token(t, 'writer')
  const documentId = 'over-rest'
  const [ctxLive, ctxPoll] = [await env.browser.newContext(), await env.browser.newContext()]
  const live = await openDoc(ctxLive, { url: env.server.url, tenantId: t, clientId: 'live', token, documentId })
  await live.evaluate(() => {
    client.connect()
    doc.change((d) => d.putText(['text'], 'from the socket'))
  })
  await until('live', async () => (await state(live)).status === 'live')
  // The other browser cannot open a WebSocket: it falls back to long-polling.
  const page = await openPage(ctxPoll, env.server.url)
  await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close())
  await page.evaluate(async ({ url, tenantId, token, documentId }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'poller', getToken: () => token, wsFailuresBeforeDegraded: 1 })
    window.doc = await client.doc(documentId)
  }, { url: env.server.url, tenantId: t, token, documentId })
  await until('degraded and synced', async () => {
    const s = await state(page)
    return (s.status === 'degraded' && s.text === 'from the socket') || s
  })
  // Its edits reach the socket client; the socket client's reach it (by polling).
  await page.evaluate(() => doc.change((d) => d.splice(['text'], 0, 0, 'REST+')))
  await until('the socket client sees the REST edit', async () => (await state(live)).text === 'REST+from the socket' || (await state(live)))
  await live.evaluate(() => doc.change((d) => d.splice(['text'], d.get(['text']).length, 0, '+WS')))
  await until('the poller sees the socket edit', async () => (await state(page)).text === 'REST+from the socket+WS' || (await state(page)))
  const [a, b] = [await state(live), await state(page)]
  assert.deepEqual(a.heads, b.heads)
  assert.equal(b.status, 'degraded')
  await ctxLive.close()
  await ctxPoll.close()
})

test('two browsers start the same document offline: the genesis change keeps both texts', async () => {
  const t = tenant()
  const token = env.server.token(t, 'writer')
  const pages = []
  for (const clientId of ['ann', 'ben']) {
    const page = await openPage(await env.browser.newContext(), env.server.url)
    await page.evaluate(async ({ url, tenantId, clientId, token }) => {
      window.client = await pf2.createSyncClient({ url, tenantId, clientId, getToken: () => token, autoConnect: false })
      window.doc = await client.doc('fresh', { init: (d) => d.putText(['text'], '') })
      doc.change((d) => d.splice(['text'], 0, 0, `written by ${clientId} offline. `))
      await doc.flushed()
    }, { url: env.server.url, tenantId: t, clientId, token })
    pages.push(page)
  }
  for (const p of pages) await p.evaluate(() => client.connect())
  await until('convergence', async () => {
    const [a, b] = [await state(pages[0]), await state(pages[1])]
    return (a.heads.join() === b.heads.join() && a.text.length > 0) || { a, b }
  })
  const text = (await state(pages[0])).text
  assert.match(text, /written by ann offline\./)
  assert.match(text, /written by ben offline\./)
  for (const p of pages) await p.context().close()
})
