// Live queries, without a browser: the query layer is pure (js/src/query.ts). A random run of
// changes checks every live query against the same query re-run from scratch, after every step.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Changes, LiveHub, LiveQuery, Plan, compareValues } from '../dist/query.js'

/** A type's entities in memory, standing in for the engine's local view. */
function store() {
  const rows = new Map()
  const hub = new LiveHub((_type, id) => rows.get(id))
  return {
    rows,
    hub,
    all: () => [...rows.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([id, value]) => ({ id, value })),
    set(id, value) {
      if (value === undefined) rows.delete(id)
      else rows.set(id, value)
      hub.changed([{ entityType: 'todo', entityId: id }])
    },
    live(query) {
      return new LiveQuery('todo', new Plan(query), { all: this.all }, hub)
    },
  }
}

test('where: equality, ranges, in, ne, missing fields and predicates', () => {
  const rows = [
    { id: 'a', value: { n: 1, s: 'x', done: false } },
    { id: 'b', value: { n: 5, s: 'y', done: true } },
    { id: 'c', value: { n: '5', s: 'z' } },
    { id: 'd', value: { n: 9, tags: ['p'] } },
  ]
  const ids = (q) => new Plan(q).run(rows).map((r) => r.id)
  assert.deepEqual(ids({ where: { done: false } }), ['a'])
  assert.deepEqual(ids({ where: { done: null } }), ['c', 'd'], 'a missing field is null')
  assert.deepEqual(ids({ where: { n: { gte: 5 } } }), ['b', 'd'], "ranges compare numbers with numbers only ('5' is not ≥ 5)")
  assert.deepEqual(ids({ where: { n: { gt: 1, lt: 9 } } }), ['b'])
  assert.deepEqual(ids({ where: { s: { in: ['x', 'z'] } } }), ['a', 'c'])
  assert.deepEqual(ids({ where: { s: { ne: 'x' } } }), ['b', 'c', 'd'])
  assert.deepEqual(ids({ where: { tags: ['p'] } }), ['d'], 'structural equality')
  assert.deepEqual(ids({ where: (v, id) => id !== 'a' && v.n !== 9 }), ['b', 'c'])
  assert.deepEqual(ids({ orderBy: { n: 'desc' } }), ['c', 'd', 'b', 'a'], 'strings sort after numbers')
  assert.deepEqual(ids({ orderBy: ['s', 'n'] }), ['d', 'a', 'b', 'c'], 'missing sorts first')
  assert.deepEqual(ids({ orderBy: 'n', offset: 1, limit: 2 }), ['b', 'd'])
  assert.deepEqual(ids({ limit: 0 }), [])
  assert.throws(() => new Plan({ limit: -1 }), RangeError)
  assert.throws(() => new Plan({ orderBy: { n: 'up' } }), TypeError)
  assert.throws(() => new Plan({ where: { n: { in: 5 } } }), TypeError)
  assert.ok(compareValues(null, false) < 0 && compareValues(true, 0) < 0 && compareValues(2, 'a') < 0)
})

test('a live query stays equal to a re-run through random changes, and calls back only on a change of its own rows', () => {
  let seed = 7 // mulberry32: the same run every time
  const rand = (n) => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return (((t ^ (t >>> 14)) >>> 0) % n)
  }
  const s = store()
  for (let i = 0; i < 60; i++) s.rows.set(`t${i}`, { n: rand(10), done: rand(2) === 0, title: `x${rand(30)}` })
  const queries = [
    {},
    { where: { done: false }, orderBy: { n: 'desc' } },
    { where: { n: { gte: 3, lt: 7 } }, orderBy: ['title'], limit: 5 },
    { where: { n: { in: [1, 2, 9] } }, orderBy: 'n', offset: 3, limit: 4 },
    { where: (v) => v.title.endsWith('1'), orderBy: [{ done: 'asc' }, { n: 'desc' }] },
  ]
  const live = queries.map((q) => {
    const l = s.live(q)
    const calls = []
    l.subscribe((rows) => calls.push(rows))
    return { q, l, calls }
  })
  for (let step = 0; step < 2000; step++) {
    const id = `t${rand(80)}`
    const before = live.map((x) => x.l.current)
    const r = rand(10)
    if (r === 0) s.set(id, undefined)
    else if (r === 1 && s.rows.has(id)) s.set(id, { ...s.rows.get(id) }) // the same value again
    else s.set(id, { n: rand(10), done: rand(2) === 0, title: `x${rand(30)}` })
    for (const [i, x] of live.entries()) {
      const rerun = new Plan(x.q).run(s.all())
      assert.deepEqual(x.l.current, rerun, `query ${i} after step ${step}`)
      const changed = before[i] !== x.l.current
      const differs = before[i].length !== rerun.length || before[i].some((row, k) => row.id !== rerun[k].id || JSON.stringify(row.value) !== JSON.stringify(rerun[k].value))
      assert.equal(changed, differs, `query ${i} step ${step}: a new result exactly when its rows changed`)
      if (changed) assert.equal(x.calls.at(-1), x.l.current, 'the callback got the new result')
      // Rows whose entity did not change keep their object.
      const old = new Map(before[i].map((row) => [row.id, row]))
      for (const row of x.l.current) if (row.id !== id && old.has(row.id)) assert.equal(row, old.get(row.id))
    }
  }
  const calls = live.map((x) => x.calls.length)
  assert.ok(calls.every((n, i) => n > 10 && n < (i === 0 ? 2000 : 1500)), `calls per query: ${calls}`)
  console.log(`calls per query over 2,000 changes: ${calls}`)
})

test('a live query nobody listens to catches up when read, and stops following changes', () => {
  const s = store()
  s.rows.set('a', { n: 1 })
  const l = s.live({ orderBy: 'n' })
  assert.deepEqual(l.current.map((r) => r.id), ['a'])
  const stop = l.subscribe(() => {})
  stop()
  s.set('b', { n: 0 })
  assert.deepEqual(l.current.map((r) => r.id), ['b', 'a'], 'read while not listening: one re-run')
  const first = l.current
  s.set('c', { n: 5 })
  s.set('c', undefined)
  assert.deepEqual(l.current, first, 'the same rows again after the changes undid themselves')
  assert.equal(l.current[0], first[0], 'and the same row objects')
})

test('changed values are read once per change, however many queries follow the type', () => {
  let reads = 0
  const rows = new Map([['a', { n: 1 }]])
  const hub = new LiveHub((_t, id) => (reads++, rows.get(id)))
  const all = () => [...rows].map(([id, value]) => ({ id, value }))
  const stops = Array.from({ length: 20 }, (_, i) => new LiveQuery('todo', new Plan({ where: { n: { gte: i } } }), { all }, hub).subscribe(() => {}))
  rows.set('a', { n: 2 })
  hub.changed([{ entityType: 'todo', entityId: 'a' }, { entityType: 'other', entityId: 'a' }])
  assert.equal(reads, 1)
  stops.forEach((s) => s())
  const c = new Changes('todo', ['x'], () => 'v')
  assert.ok(c.has('x') && !c.has('y') && c.value('x') === 'v')
})
