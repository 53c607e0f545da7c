// Browser benchmark (make bench-live): 20 live queries over 10,000 entities, one mutation at a
// time — the live queries maintained incrementally (client.watch) against re-running the same 20
// queries on every change (client.query in a `change` handler), in the same page of headless
// Chromium, interleaved. Per mutation: the time from calling `mutate` until every query's result
// is current, and the page's script CPU (Chrome's ScriptDuration, over all mutations).
// Usage: node bench/live.mjs [entities] [mutations]
import { launchBrowser, openPage, startServer } from '../test/harness.mjs'

const ENTITIES = Number(process.argv[2] ?? 10_000)
const MUTATIONS = Number(process.argv[3] ?? 50)
const ROUNDS = 3

const server = await startServer()
const browser = await launchBrowser()
try {
  const tenant = `bench-${Date.now()}`
  const token = server.token(tenant, 'bench')
  // Seeded in batches of 500, each by its own user and client (the default reconcile limit is
  // 10 requests a minute per user).
  for (let i = 0; i < ENTITIES; i += 500) {
    const seeder = `seeder${i}`
    const operations = Array.from({ length: Math.min(500, ENTITIES - i) }, (_, k) => {
      const n = i + k
      return {
        operationId: `seed-${n}`, clientId: seeder, clientSeq: k + 1, tenantId: tenant, entityType: 'todo', entityId: `t${String(n).padStart(5, '0')}`,
        operationType: 'CREATE', timestamp: new Date().toISOString(), vectorClock: { [seeder]: k + 1 },
        payload: { title: `todo ${(n * 7919) % ENTITIES}`, done: n % 3 === 0, priority: n % 5, owner: `u${n % 20}`, createdAt: n },
      }
    })
    await server.api('POST', '/api/reconciliation/reconcile', server.token(tenant, seeder), { requestId: `seed-${i}`, clientId: seeder, tenantId: tenant, operations })
  }
  const context = await browser.newContext()
  const page = await openPage(context, server.url)
  const cdp = await context.newCDPSession(page)
  await cdp.send('Performance.enable')
  const scriptSeconds = async () => (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name === 'ScriptDuration').value
  await page.evaluate(async ({ url, tenantId, token, ENTITIES }) => {
    const client = await pf2.createSyncClient({ url, tenantId, clientId: 'bench', getToken: () => token })
    await new Promise((resolve) => {
      const off = client.on('change', () => check())
      const check = () => client.query('todo').length === ENTITIES && (off(), resolve())
      check()
    })
    client.disconnect() // local work only from here: nothing is sent or received
    // Twenty queries an app might show at once: filtered lists, pages, ranges, a predicate.
    const queries = [
      { where: { done: false }, orderBy: { createdAt: 'desc' }, limit: 50 },
      { where: { done: true }, orderBy: 'title', limit: 50 },
      { where: { priority: { gte: 3 } }, orderBy: [{ priority: 'desc' }, 'title'], limit: 20 },
      { where: { priority: { in: [0, 1] }, done: false }, orderBy: 'createdAt', offset: 100, limit: 25 },
      { where: (v) => v.title.endsWith('7'), orderBy: 'title' },
      ...Array.from({ length: 15 }, (_, i) => ({ where: { owner: `u${i}` }, orderBy: { createdAt: 'asc' }, limit: 30 })),
    ]
    window.bench = { client, queries }
  }, { url: server.url, tenantId: tenant, token, ENTITIES })

  /** One mode, MUTATIONS mutations: ms per mutation (median) and script CPU. */
  const run = async (mode, round) => {
    const cpu0 = await scriptSeconds()
    const times = await page.evaluate(async ({ mode, round, MUTATIONS, ENTITIES }) => {
      const { client, queries } = window.bench
      let results = queries.map((q) => client.query('todo', q))
      let stops = []
      let done = () => {}
      if (mode === 'floor') {
        stops.push(client.on('change', () => done())) // the mutation alone: no query at all
      } else if (mode === 'live') {
        stops = queries.map((q, i) => client.watch('todo', q, (rows) => (results[i] = rows)))
        // Registered after the watches' dispatcher: runs when every watch is current.
        stops.push(client.on('change', () => done()))
      } else {
        stops.push(
          client.on('change', () => {
            results = queries.map((q) => client.query('todo', q))
            done()
          }),
        )
      }
      const times = []
      for (let m = 0; m < MUTATIONS; m++) {
        const n = (m * 2654435761 + round * 977) % ENTITIES
        const id = `t${String(n).padStart(5, '0')}`
        const current = client.get('todo', id)
        const finished = new Promise((resolve) => (done = resolve))
        const t0 = performance.now()
        const written = client.mutate('todo', id, { done: !current.done, title: `${current.title}+` })
        await finished
        times.push(performance.now() - t0)
        await written
      }
      stops.forEach((s) => s())
      window.lastResults = results.map((r) => r.map((row) => row.id).join(','))
      return times.sort((a, b) => a - b)
    }, { mode, round, MUTATIONS, ENTITIES })
    const cpu = (await scriptSeconds()) - cpu0
    return { mode, round, median: times[Math.floor(times.length / 2)], p90: times[Math.floor(times.length * 0.9)], cpu }
  }
  const rows = []
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of round % 2 ? ['rerun', 'live', 'floor'] : ['floor', 'live', 'rerun']) rows.push(await run(mode, round))
  }
  // Both modes end at the same results (the same queries over the same data).
  const check = await page.evaluate(() => {
    const { client, queries } = window.bench
    return queries.map((q) => client.query('todo', q).map((r) => r.id).join(',')).join('|') === window.lastResults.join('|')
  })
  if (!check) throw new Error('the last results differ from a fresh run of the queries')
  console.log(`\n${ENTITIES} entities, 20 queries, ${MUTATIONS} mutations per set (one at a time), Chromium ${browser.version()}\n`)
  console.log('| set | mode | ms to current, median | p90 | script CPU s |')
  console.log('| --- | --- | --- | --- | --- |')
  const names = { floor: 'the mutation alone (floor)', live: 'live queries (watch)', rerun: 're-run the 20 queries' }
  for (const r of rows) console.log(`| ${r.round + 1} | ${names[r.mode]} | ${r.median.toFixed(2)} | ${r.p90.toFixed(2)} | ${r.cpu.toFixed(3)} |`)
  const med = (mode, k) => {
    const v = rows.filter((r) => r.mode === mode).map((r) => r[k]).sort((a, b) => a - b)
    return v[Math.floor(v.length / 2)]
  }
  console.log(`\nfloor (the mutation alone): ${med('floor', 'median').toFixed(2)} ms, CPU ${med('floor', 'cpu').toFixed(3)} s`)
  console.log(`medians: live ${med('live', 'median').toFixed(2)} ms vs re-run ${med('rerun', 'median').toFixed(2)} ms (${(med('live', 'median') / med('rerun', 'median')).toPrecision(2)}×); CPU ${med('live', 'cpu').toFixed(3)} s vs ${med('rerun', 'cpu').toFixed(3)} s (${(med('live', 'cpu') / med('rerun', 'cpu')).toPrecision(2)}×)`)
} finally {
  await browser.close()
  await server.stop()
}
