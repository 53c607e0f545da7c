// @pf2/sync/react in Chromium: the staged npm package and React 19 bundled by esbuild as an app
// would, a real server. Render counts: a component re-renders only when its own result changed.
// Every wait is for a condition; "no render happened" is read after a later sentinel render,
// which React commits after every update scheduled before it.
import assert from 'node:assert/strict'
import { symlinkSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { jsDir, until, useServerAndBrowser } from './harness.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const env = useServerAndBrowser()
const WASM = { base: '/pkg/dist/wasm/pf2_sync_bg.wasm', docs: '/pkg/dist/wasm/pf2_automerge_bg.wasm' }

let bundled
/** Bundle the page once, into the suite's server's static directory. */
async function bundle() {
  const www = env.server.www
  // The staged package as `@pf2/sync` in node_modules, resolved through its `exports`.
  mkdirSync(join(www, 'node_modules', '@pf2'), { recursive: true })
  symlinkSync(join(www, 'pkg'), join(www, 'node_modules', '@pf2', 'sync'))
  await build({
    entryPoints: [join(here, 'react', 'entry.mjs')],
    bundle: true,
    format: 'esm',
    splitting: true,
    outdir: join(www, 'react'),
    nodePaths: [join(www, 'node_modules'), join(jsDir, 'node_modules')],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  })
  writeFileSync(join(www, 'react.html'), '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><script type="module" src="/react/entry.js"></script>')
}

async function reactPage(context) {
  await (bundled ??= bundle())
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error('[page error]', e))
  page.on('console', (m) => m.type() === 'error' && console.error('[page console]', m.text()))
  await page.goto(`${env.server.url}/react.html`)
  await page.waitForFunction(() => window.pf2Ready === true)
  return page
}

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`

/** In the page: a counter of renders per name, and `sentinel(n)`, which changes the `note`
 * entity and waits for its component to show it. */
const SETUP = `
  window.renders = {}
  window.count = (k) => (renders[k] = (renders[k] ?? 0) + 1)
  window.h = React.createElement
  window.waitFor = (check) => new Promise((resolve) => {
    const tick = () => (check() ? resolve() : requestAnimationFrame(tick))
    tick()
  })
  window.sentinel = async (n) => {
    await client.mutate('note', 'n', { body: 's' + n })
    await waitFor(() => document.getElementById('note')?.textContent === 's' + n)
    return { ...renders }
  }
`

test('useQuery and useEntity re-render only the components whose result changed', async () => {
  const t = tenant()
  const context = await env.browser.newContext()
  const page = await reactPage(context)
  const delta = await page.evaluate(async ({ url, tenantId, token, setup }) => {
    eval(setup)
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'c1', getToken: () => token, autoConnect: false })
    const { useQuery, useEntity, SyncProvider } = hooks
    const Row = React.memo(function Row({ row }) {
      count(`row:${row.id}`)
      return h('li', null, row.value.title)
    })
    function Open() {
      const rows = useQuery('todo', { where: { done: false }, orderBy: 'title' })
      count('open')
      return h('ul', { id: 'open' }, rows.map((r) => h(Row, { key: r.id, row: r })))
    }
    function Done() {
      const rows = useQuery('todo', { where: { done: true }, orderBy: { title: 'desc' } })
      count('done')
      return h('ul', { id: 'done' }, rows.map((r) => h('li', { key: r.id }, r.value.title)))
    }
    function One() {
      const a = useEntity('todo', 'a')
      count('one')
      return h('p', { id: 'one' }, a?.title ?? '-')
    }
    function Note() {
      const n = useEntity('note', 'n')
      count('note')
      return h('p', { id: 'note' }, n?.body ?? '-')
    }
    const root = document.body.appendChild(document.createElement('div'))
    createRoot(root).render(h(SyncProvider, { client }, h(Open), h(Done), h(One), h(Note)))
    await client.mutate('todo', 'a', { title: 'a', done: false })
    await client.mutate('todo', 'b', { title: 'b', done: false })
    await client.mutate('todo', 'c', { title: 'c', done: true })
    await waitFor(() => document.getElementById('open')?.textContent === 'ab' && document.getElementById('done')?.textContent === 'c')
    const steps = {}
    let last = await sentinel(0)
    const step = async (name, fn) => {
      await fn()
      const now = await sentinel(Object.keys(steps).length + 1)
      steps[name] = Object.fromEntries(Object.keys(now).map((k) => [k, now[k] - (last[k] ?? 0)]).filter(([k, v]) => v !== 0 && k !== 'note'))
      last = now
    }
    await step('a done todo renamed', () => client.mutate('todo', 'c', { title: 'c2' }))
    await step('an open todo renamed', () => client.mutate('todo', 'b', { title: 'b2' }))
    await step('a todo set to its own values', () => client.mutate('todo', 'a', { title: 'a', done: false }))
    await step('an open todo done', () => client.mutate('todo', 'b', { done: true }))
    await step('the entity a renamed', () => client.mutate('todo', 'a', { title: 'a2' }))
    await step('another type changed', () => client.mutate('other', 'x', { v: 1 }))
    return { steps, open: document.getElementById('open').textContent, done: document.getElementById('done').textContent }
  }, { url: env.server.url, tenantId: t, token: env.server.token(t, 'u1'), setup: SETUP })
  assert.deepEqual(delta.steps, {
    'a done todo renamed': { done: 1 },
    'an open todo renamed': { open: 1, 'row:b': 1 },
    'a todo set to its own values': {},
    'an open todo done': { open: 1, done: 1 },
    'the entity a renamed': { open: 1, 'row:a': 1, one: 1 },
    'another type changed': {},
  })
  assert.equal(delta.open, 'a2')
  assert.equal(delta.done, 'c2b2')
  await context.close()
})

test('useSyncStatus: pending count and status, progress of a large first sync, a render only for a new value', async () => {
  const t = tenant()
  const writer = env.server.token(t, 'writer')
  const operations = Array.from({ length: 1200 }, (_, n) => ({
    operationId: `seed-${n}`, clientId: 'seeder', clientSeq: n + 1, tenantId: t, entityType: 'todo',
    entityId: `t${n}`, operationType: 'CREATE', payload: { n }, timestamp: new Date().toISOString(), vectorClock: { seeder: n + 1 },
  }))
  for (let i = 0; i < operations.length; i += 500) {
    await env.server.api('POST', '/api/reconciliation/reconcile', writer, { requestId: `seed-${i}`, clientId: 'seeder', tenantId: t, operations: operations.slice(i, i + 500) })
  }
  const context = await env.browser.newContext()
  const page = await reactPage(context)
  const seen = await page.evaluate(async ({ url, tenantId, token, setup }) => {
    eval(setup)
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'c1', getToken: () => token, autoConnect: false })
    const snapshots = (window.snapshots = [])
    function Status() {
      const s = hooks.useSyncStatus()
      count('status')
      snapshots.push(s)
      return h('p', { id: 'status' }, `${s.status}/${s.pendingCount}/${s.progress ? s.progress.received : '-'}`)
    }
    function Note() {
      const n = hooks.useEntity('note', 'n')
      return h('p', { id: 'note' }, n?.body ?? '-')
    }
    createRoot(document.body.appendChild(document.createElement('div'))).render(h(hooks.SyncProvider, { client }, h(Status), h(Note)))
    await waitFor(() => document.getElementById('status')?.textContent === 'offline/0/-')
    await client.mutate('todo', 'mine', { n: -1 })
    await waitFor(() => document.getElementById('status').textContent === 'offline/1/-')
    client.connect()
    await waitFor(() => document.getElementById('status').textContent === 'live/0/-' && client.query('todo').length === 1201)
    const progress = snapshots.filter((s) => s.progress).map((s) => s.progress.received)
    return { progress, statuses: [...new Set(snapshots.map((s) => s.status))], distinct: new Set(snapshots).size, renders: renders.status }
  }, { url: env.server.url, tenantId: t, token: env.server.token(t, 'u1'), setup: SETUP })
  assert.ok(seen.progress.length >= 1 && seen.progress.every((r) => r > 0 && r < 1200), JSON.stringify(seen.progress))
  assert.deepEqual(seen.progress, [...seen.progress].sort((a, b) => a - b))
  assert.ok(seen.statuses.includes('offline') && seen.statuses.at(-1) === 'live', JSON.stringify(seen.statuses))
  assert.equal(seen.distinct, seen.renders, 'every render had a new snapshot')
  // Another client's write arrives: whatever it changes of the status is rendered once.
  await env.server.api('POST', '/api/reconciliation/reconcile', writer, {
    requestId: 'other', clientId: 'seeder', tenantId: t,
    operations: [{ ...operations[0], operationId: 'other-1', clientSeq: 1201, entityId: 'x1', vectorClock: { seeder: 1201 } }],
  })
  await page.waitForFunction(() => client.get('todo', 'x1') !== undefined)
  const all = await page.evaluate(async () => {
    await sentinel(1)
    return window.snapshots.map((s) => `${s.status}/${s.pendingCount}/${s.progress ? `${s.progress.received}:${s.progress.total}` : '-'}`)
  })
  // A render for each new snapshot, and a new snapshot only when status, pending count or
  // progress changed: no two consecutive renders show the same.
  for (let i = 1; i < all.length; i++) assert.notEqual(all[i], all[i - 1], `renders ${i - 1} and ${i} show the same: ${all.join(' ')}`)
  assert.ok(all.length < 40, `${all.length} renders: ${all.join(' ')}`)
  await context.close()
})

test('usePresence, useRoom, useEvents and useDoc between two users', async () => {
  const t = tenant()
  const service = env.server.token(t, 'feed', 3600, { roles: ['service'] })
  const contexts = [await env.browser.newContext(), await env.browser.newContext()]
  const pages = await Promise.all(contexts.map((c) => reactPage(c)))
  await Promise.all(
    pages.map((page, i) =>
      page.evaluate(async ({ url, tenantId, token, setup, user, wasm }) => {
        eval(setup)
        window.client = await pf2.createSyncClient({ url, tenantId, clientId: `c-${user}`, getToken: () => token })
        await client.doc('d1', { wasmUrl: wasm, init: (d) => d.putText(['body'], '') }) // the documents module's wasm, from the staged package
        const { usePresence, useRoom, useEvents, useDoc, SyncProvider } = hooks
        function People() {
          const { others, set } = usePresence('r1')
          React.useEffect(() => {
            if (client.status === 'live') set({ status: 'online', metadata: { name: user } })
            return client.on('status', (s) => s === 'live' && set({ status: 'online', metadata: { name: user } }))
          }, [set])
          count('people')
          return h('p', { id: 'people' }, others.map((p) => p.metadata?.name).filter((n) => n && n !== user).sort().join(','))
        }
        function Chat() {
          const { messages, send } = useRoom('r1')
          window.say = send
          return h('p', { id: 'chat' }, messages.map((m) => m.payload.text).join('|'))
        }
        function Feed() {
          const events = useEvents('news.*')
          return h('p', { id: 'feed' }, events.map((e) => e.payload.headline).join('|'))
        }
        function Note() {
          const { value, handle } = useDoc('d1', { init: (d) => d.putText(['body'], '') })
          window.note = handle
          return h('p', { id: 'doc' }, value ? value.body : '…')
        }
        createRoot(document.body.appendChild(document.createElement('div'))).render(h(SyncProvider, { client }, h(People), h(Chat), h(Feed), h(Note)))
        await waitFor(() => client.status === 'live' && document.getElementById('doc')?.textContent === '')
      }, { url: env.server.url, tenantId: t, token: env.server.token(t, `user${i}`), setup: SETUP, user: `user${i}`, wasm: WASM.docs }),
    ),
  )
  const text = (page, id) => page.evaluate((id) => document.getElementById(id)?.textContent, id)
  await until('each sees the other present', async () => (await text(pages[0], 'people')) === 'user1' && (await text(pages[1], 'people')) === 'user0' || [await text(pages[0], 'people'), await text(pages[1], 'people')])
  // Room messages are Class A (not queued): sent again until one arrives after the join.
  await until('a room message', async () => {
    const got = await text(pages[0], 'chat')
    if (got.startsWith('hello')) return true
    await pages[1].evaluate(() => say({ text: 'hello' }))
    return got
  })
  await env.server.api('POST', '/api/events', service, { eventType: 'news.flash', payload: { headline: 'h1' } })
  await until('an event on both', async () => (await text(pages[0], 'feed')) === 'h1' && (await text(pages[1], 'feed')) === 'h1' || [await text(pages[0], 'feed'), await text(pages[1], 'feed')])
  await pages[0].evaluate(() => note.change((d) => d.splice(['body'], 0, 0, 'Hi from 0. ')))
  await pages[1].evaluate(() => note.change((d) => d.splice(['body'], 0, 0, 'Hi from 1. ')))
  await until('the document converges', async () => {
    const [a, b] = [await text(pages[0], 'doc'), await text(pages[1], 'doc')]
    return (a === b && a.includes('Hi from 0.') && a.includes('Hi from 1.')) || [a, b]
  })
  for (const c of contexts) await c.close()
})
