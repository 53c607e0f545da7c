// Sync rules in the browser (docs/api/sync-rules.md): the packed @pf2/sync in headless Chromium
// against a sync-server started with --sync-rules (the docs' first example).
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import { openPage, root, until, useServerAndBrowser } from './harness.mjs'

// The docs' first example, the same file the Rust tests read.
const rules = join(root, 'sdk-core', 'tests', 'data', 'example-rules.toml')
const env = useServerAndBrowser({ env: { PF2_SYNC_RULES: rules } })

const tenant = () => `t-${Math.random().toString(36).slice(2, 10)}`

/** Alice writes through REST, as a second device would. */
function writer(t) {
  const token = env.server.token(t, 'alice', 3600, { claims: { projects: ['p1'] } })
  let seq = 0
  return (entityType, entityId, operationType, payload = null) => {
    seq += 1
    const op = {
      operationId: `alice-${seq}`, clientId: 'alice-web', clientSeq: seq, tenantId: t, entityType, entityId,
      operationType, payload, timestamp: new Date().toISOString(), vectorClock: { 'alice-web': seq },
    }
    return env.server
      .api('POST', '/api/reconciliation/reconcile', token, { requestId: `r-${seq}`, clientId: 'alice-web', tenantId: t, operations: [op] })
      .then((r) => assert.equal(r.resolvedOperations[0].status, 'applied', JSON.stringify(r)))
  }
}

/** The entity ids of `type` in the client's IndexedDB (what a reload would show). */
function stored(page, dbName, type) {
  return page.evaluate(
    ({ dbName, type }) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open(dbName)
        open.onerror = () => reject(open.error)
        open.onsuccess = () => {
          const all = open.result.transaction('entities').objectStore('entities').getAll()
          all.onsuccess = () => {
            open.result.close()
            resolve(all.result.filter((r) => r.entityType === type).map((r) => r.entityId).sort())
          }
        }
      }),
    { dbName, type },
  )
}

test('a user added to a project sees its tasks appear; removed, they vanish from the page and from IndexedDB', async () => {
  const t = tenant()
  const alice = writer(t)
  await alice('task', 'k1', 'CREATE', { projectId: 'p1', title: 'one' })
  await alice('task', 'k2', 'CREATE', { projectId: 'p1', title: 'two' })
  await alice('todo', 'diary', 'CREATE', { owner: 'alice', title: "alice's private todo" })

  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  const bob = env.server.token(t, 'bob')
  await page.evaluate(async ({ url, tenantId, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'bob-laptop', getToken: () => token })
    await client.mutate('todo', 'mine', { owner: 'bob', title: "bob's private todo" })
    await client.settled()
  }, { url: env.server.url, tenantId: t, token: bob })
  const view = () => page.evaluate(() => ({
    tasks: client.query('task').map((e) => e.id),
    todos: client.query('todo').map((e) => e.id),
    synced: client.channels.synced,
  }))
  await until('bob synced', async () => (await view()).synced?.includes('user:bob') || (await view()))
  assert.deepEqual(await view(), { tasks: [], todos: ['mine'], synced: ['user:bob'] }, "alice's todo and p1 are not bob's")

  // Alice adds bob to p1: its tasks — unchanged since bob's last pull — move in, live. The page
  // notes when they arrived, to report how long after the grant's commit (not asserted: timing
  // is for docs/benchmarks.md, not for tests).
  await page.evaluate(() => {
    const off = client.on('change', () => {
      if (client.query('task').length === 2) (window.movedInAt = Date.now()), off()
    })
  })
  const granted = Date.now()
  await alice('member', 'm-bob', 'CREATE', { userId: 'bob', projectId: 'p1' })
  const committed = Date.now()
  await until('the tasks move in', async () => (await view()).tasks.length === 2 || (await view()))
  const movedIn = await page.evaluate(() => window.movedInAt)
  console.log(`move-in: the tasks were on the page ${movedIn - committed} ms after the grant's commit was answered (${movedIn - granted} ms after it was sent)`)
  assert.deepEqual((await view()).tasks, ['k1', 'k2'])
  const db = `pf2-sync:${t}:bob-laptop`
  await page.evaluate(() => client.flushed())
  assert.deepEqual(await stored(page, db, 'task'), ['k1', 'k2'])

  // Alice removes bob: the tasks vanish from the page and from IndexedDB; bob's own todo stays.
  await alice('member', 'm-bob', 'DELETE')
  await until('the tasks move out', async () => (await view()).tasks.length === 0 || (await view()))
  await page.evaluate(() => client.flushed())
  assert.deepEqual(await stored(page, db, 'task'), [])
  assert.deepEqual(await stored(page, db, 'member'), [])
  assert.deepEqual(await stored(page, db, 'todo'), ['mine'])
  assert.deepEqual((await view()).todos, ['mine'])

  // A write into alice's channel is rejected with AUTHZ_FAILED and rolled back.
  const rejected = await page.evaluate(async () => {
    const got = new Promise((resolve) => client.on('rejected', resolve))
    await client.mutate('todo', 'sneaky', { owner: 'alice', title: 'planted' })
    const r = await got
    await client.settled()
    return { code: r.code, entityId: r.entityId, after: client.get('todo', 'sneaky') ?? null }
  })
  assert.deepEqual(rejected, { code: 'AUTHZ_FAILED', entityId: 'sneaky', after: null })
  const diary = await fetch(`${env.server.url}/api/reconciliation/snapshot/todo/diary`, { headers: { authorization: `Bearer ${bob}` } })
  assert.equal(diary.status, 404, "alice's todo does not exist for bob")
  await context.close()
})

test('partial sync: client.channels.set moves a project in and out', async () => {
  const t = tenant()
  const alice = writer(t)
  await alice('task', 'k1', 'CREATE', { projectId: 'p1', title: 'one' })
  await alice('todo', 'a1', 'CREATE', { owner: 'alice', title: 'mine' })
  const context = await env.browser.newContext()
  const page = await openPage(context, env.server.url)
  const token = env.server.token(t, 'alice', 3600, { claims: { projects: ['p1'] } })
  await page.evaluate(async ({ url, tenantId, token }) => {
    window.client = await pf2.createSyncClient({ url, tenantId, clientId: 'alice-tab', getToken: () => token, channels: ['user:alice'] })
    await client.settled()
  }, { url: env.server.url, tenantId: t, token })
  const view = () => page.evaluate(() => ({ tasks: client.query('task').map((e) => e.id), todos: client.query('todo').map((e) => e.id), synced: client.channels.synced }))
  await until('the first sync', async () => (await view()).todos.length === 1 || (await view()))
  assert.deepEqual(await view(), { tasks: [], todos: ['a1'], synced: ['user:alice'] })
  await page.evaluate(() => client.channels.set(['user:alice', 'project:p1']))
  await until('p1 moves in', async () => (await view()).tasks.length === 1 || (await view()))
  await page.evaluate(() => client.channels.set(['project:p1']))
  await until('user:alice moves out', async () => (await view()).todos.length === 0 || (await view()))
  assert.deepEqual(await view(), { tasks: ['k1'], todos: [], synced: ['project:p1'] })
  await context.close()
})
