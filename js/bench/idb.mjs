// Browser benchmark: @pf2/sync's durable enqueue (client.mutate, batches awaited together so they
// share one IndexedDB transaction) against a raw IndexedDB loop putting the same number of
// records, one transaction per batch, in the same page of headless Chromium.
// Usage: node bench/idb.mjs [batches] [batch-size]   (make bench-browser)
import { launchBrowser, openPage, startServer } from '../test/harness.mjs'

const BATCHES = Number(process.argv[2] ?? 20)
const SIZE = Number(process.argv[3] ?? 100)
const ROUNDS = 3

const server = await startServer()
const browser = await launchBrowser()
try {
  const context = await browser.newContext()
  const page = await openPage(context, server.url)
  await context.setOffline(true) // enqueue only: nothing leaves the page
  const rows = []
  for (let round = 0; round < ROUNDS; round++) {
    rows.push(
      await page.evaluate(async ({ url, BATCHES, SIZE, round }) => {
        const record = (i) => ({ title: `item ${i}`, done: false, n: i, tags: ['a', 'b'] })
        // Floor: raw IndexedDB, one readwrite transaction per batch of puts.
        const db = await new Promise((resolve, reject) => {
          const r = indexedDB.open(`raw-${round}`, 1)
          r.onupgradeneeded = () => r.result.createObjectStore('ops')
          r.onsuccess = () => resolve(r.result)
          r.onerror = () => reject(r.error)
        })
        let t0 = performance.now()
        for (let b = 0; b < BATCHES; b++) {
          await new Promise((resolve, reject) => {
            const tx = db.transaction('ops', 'readwrite')
            for (let i = 0; i < SIZE; i++) tx.objectStore('ops').put(record(b * SIZE + i), `op-${b}-${i}`)
            tx.oncomplete = resolve
            tx.onerror = () => reject(tx.error)
          })
        }
        const raw = performance.now() - t0
        db.close()
        // PF-2: the same number of mutations through the SDK (validation, HLC, vector clock,
        // the optimistic view, the queue record in the local_store layout).
        const client = await pf2.createSyncClient({ url, tenantId: 'bench', clientId: `bench-${round}`, getToken: () => 'x' })
        t0 = performance.now()
        for (let b = 0; b < BATCHES; b++) {
          await Promise.all(Array.from({ length: SIZE }, (_, i) => client.mutate('todo', `t${b}-${i}`, record(b * SIZE + i))))
        }
        const sdk = performance.now() - t0
        client.close()
        const n = BATCHES * SIZE
        return { n, raw: (n / raw) * 1000, sdk: (n / sdk) * 1000 }
      }, { url: server.url, BATCHES, SIZE, round }),
    )
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  const raw = median(rows.map((r) => r.raw))
  const sdk = median(rows.map((r) => r.sdk))
  console.log(`IndexedDB enqueue, ${BATCHES} batches of ${SIZE}, median of ${ROUNDS} (Chromium ${browser.version()})`)
  console.log('')
  console.log('| path | ops/s | ratio |')
  console.log('| --- | --- | --- |')
  console.log(`| raw IndexedDB, one transaction per batch (floor) | ${raw.toFixed(0)} | 1.00 |`)
  console.log(`| @pf2/sync client.mutate, batch awaited together | ${sdk.toFixed(0)} | ${(sdk / raw).toFixed(2)} |`)
} finally {
  await browser.close()
  await server.stop()
}
