/**
 * Queries over the local optimistic view, and live queries maintained incrementally.
 *
 * A live query keeps every matching row in query order. A change to some entities costs, per
 * live query, one predicate test and one binary search for each changed entity of its type —
 * never a re-run — and the result is a new array only when the rows of its window
 * (`offset`/`limit`) changed. A row that did not change keeps its object, so a UI can memoize
 * on it. Pure logic: no engine, no socket, no IndexedDB; `SyncClient` feeds it (docs/api/js.md).
 */

/** An entity in a result: its id and its fields. Treat both as immutable. */
export interface Row<T> {
  readonly id: string
  readonly value: T
}

/** A condition on one field. Ranges compare values of the same kind only (numbers with numbers,
 * strings with strings, by code unit); a missing field is `null`. */
export interface Condition<V> {
  eq?: V | null
  ne?: V | null
  gt?: V
  gte?: V
  lt?: V
  lte?: V
  in?: ReadonlyArray<V | null>
}

/** Per field: a value (equality) or a {@link Condition}; every field must match. */
export type WhereFields<T> = { [K in keyof T]?: T[K] | null | Condition<T[K]> }

/** `{ field: 'asc' | 'desc' }`, or just the field's name (ascending). */
export type OrderKey<T> = (keyof T & string) | { [K in keyof T & string]?: 'asc' | 'desc' }

export interface Query<T> {
  /** Field conditions, or a predicate (keep it pure; a new function is a new query). */
  where?: WhereFields<T> | ((value: T, id: string) => boolean)
  /** Sort keys in order of precedence; ties (and the default) go by id. */
  orderBy?: OrderKey<T> | ReadonlyArray<OrderKey<T>>
  limit?: number
  offset?: number
}

type Compare<T> = (a: Row<T>, b: Row<T>) => number
type Matcher<T> = (value: T, id: string) => boolean

const OPS = new Set(['eq', 'ne', 'gt', 'gte', 'lt', 'lte', 'in'])

function rank(v: unknown): number {
  if (v === undefined || v === null) return 0
  switch (typeof v) {
    case 'boolean':
      return 1
    case 'number':
      return 2
    case 'string':
      return 3
    default:
      return 4
  }
}

/** Total order over field values: missing/null < booleans < numbers < strings < the rest. */
export function compareValues(a: unknown, b: unknown): number {
  const ra = rank(a)
  const rb = rank(b)
  if (ra !== rb) return ra - rb
  if (ra === 0) return 0
  if (ra === 4) {
    const sa = JSON.stringify(a)
    const sb = JSON.stringify(b)
    return sa < sb ? -1 : sa > sb ? 1 : 0
  }
  return (a as number) < (b as number) ? -1 : (a as number) > (b as number) ? 1 : 0
}

/** Structural equality of JSON values. */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  if (Array.isArray(a)) {
    const bb = b as unknown[]
    return a.length === bb.length && a.every((x, i) => sameJson(x, bb[i]))
  }
  const ka = Object.keys(a)
  if (ka.length !== Object.keys(b).length) return false
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && sameJson((a as any)[k], (b as any)[k]))
}

function isCondition(c: unknown): c is Condition<unknown> {
  if (c === null || typeof c !== 'object' || Array.isArray(c)) return false
  const keys = Object.keys(c)
  return keys.length > 0 && keys.every((k) => OPS.has(k))
}

const norm = (v: unknown) => (v === undefined ? null : v)
const comparable = (a: unknown, b: unknown) => rank(a) === rank(b) && rank(a) !== 0 && rank(a) !== 4

function fieldMatcher(cond: unknown): (v: unknown) => boolean {
  if (!isCondition(cond)) return (v) => sameJson(norm(v), norm(cond))
  const tests: Array<(v: unknown) => boolean> = []
  const c = cond as Condition<unknown>
  if ('eq' in c) tests.push((v) => sameJson(norm(v), norm(c.eq)))
  if ('ne' in c) tests.push((v) => !sameJson(norm(v), norm(c.ne)))
  if (c.gt !== undefined) tests.push((v) => comparable(v, c.gt) && compareValues(v, c.gt) > 0)
  if (c.gte !== undefined) tests.push((v) => comparable(v, c.gte) && compareValues(v, c.gte) >= 0)
  if (c.lt !== undefined) tests.push((v) => comparable(v, c.lt) && compareValues(v, c.lt) < 0)
  if (c.lte !== undefined) tests.push((v) => comparable(v, c.lte) && compareValues(v, c.lte) <= 0)
  if (c.in !== undefined) {
    if (!Array.isArray(c.in)) throw new TypeError('`in` takes an array')
    const set = c.in.map(norm)
    tests.push((v) => set.some((x) => sameJson(norm(v), x)))
  }
  return (v) => tests.every((t) => t(v))
}

function matcher<T>(where: Query<T>['where']): Matcher<T> {
  if (where === undefined) return () => true
  if (typeof where === 'function') return where
  if (where === null || typeof where !== 'object') throw new TypeError('`where` takes an object of fields or a function')
  const fields = Object.entries(where).map(([f, c]) => [f, fieldMatcher(c)] as const)
  return (value) => fields.every(([f, m]) => m((value as any)?.[f]))
}

function comparator<T>(orderBy: Query<T>['orderBy']): Compare<T> {
  const keys: Array<[string, number]> = []
  const list = orderBy === undefined ? [] : Array.isArray(orderBy) ? orderBy : [orderBy]
  for (const k of list as Array<OrderKey<T>>) {
    if (typeof k === 'string') keys.push([k, 1])
    else if (k && typeof k === 'object') {
      for (const [f, d] of Object.entries(k)) {
        if (d !== 'asc' && d !== 'desc') throw new TypeError(`orderBy ${f}: 'asc' or 'desc', not ${String(d)}`)
        keys.push([f, d === 'desc' ? -1 : 1])
      }
    } else throw new TypeError('orderBy takes field names or { field: "asc" | "desc" }')
  }
  return (a, b) => {
    for (const [f, dir] of keys) {
      const c = compareValues((a.value as any)?.[f], (b.value as any)?.[f])
      if (c !== 0) return c * dir
    }
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
  }
}

function checkWindow(q: Query<unknown>): [number, number] {
  const offset = q.offset ?? 0
  const limit = q.limit ?? Infinity
  if (!(Number.isInteger(offset) && offset >= 0)) throw new RangeError('offset must be a whole number ≥ 0')
  if (!(limit === Infinity || (Number.isInteger(limit) && limit >= 0))) throw new RangeError('limit must be a whole number ≥ 0')
  return [offset, limit]
}

/** A compiled query: its test, its order and its window. */
export class Plan<T> {
  readonly matches: Matcher<T>
  readonly compare: Compare<T>
  readonly offset: number
  readonly limit: number

  constructor(query: Query<T> = {}) {
    this.matches = matcher(query.where)
    this.compare = comparator(query.orderBy)
    ;[this.offset, this.limit] = checkWindow(query as Query<unknown>)
  }

  /** Run once over every row of the type. */
  run(rows: ReadonlyArray<Row<T>>): Row<T>[] {
    const hit = rows.filter((r) => this.matches(r.value, r.id)).sort(this.compare)
    return this.window(hit)
  }

  window(sorted: ReadonlyArray<Row<T>>): Row<T>[] {
    if (this.offset === 0 && this.limit >= sorted.length) return sorted.slice()
    return sorted.slice(this.offset, this.limit === Infinity ? undefined : this.offset + this.limit)
  }
}

/** Where `row` goes in `sorted` (the first index whose row sorts after it). */
function insertionPoint<T>(sorted: Row<T>[], row: Row<T>, compare: Compare<T>): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (compare(sorted[mid], row) <= 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** The rows of one type, as the source of live queries: what changed is told, not searched. */
export interface RowSource<T> {
  /** Every row of the type (a full read, for the first run and after a reload). */
  all(): ReadonlyArray<Row<T>>
}

/**
 * What a live query and a live entity share: a `current` value that catches up when read while
 * nobody listens, and listeners that follow changes while there are some.
 */
abstract class Live<V> implements Follower {
  protected seen = ''
  private listeners = new Set<(value: V) => void>()

  constructor(
    readonly entityType: string,
    protected readonly hub: LiveHub,
  ) {}

  /** The value now. */
  get current(): V {
    if (this.seen !== this.hub.stamp(this.entityType)) this.refresh()
    return this.value()
  }

  /** Call `listener` with each new value; returns the way to stop. */
  subscribe(listener: (value: V) => void): () => void {
    if (this.listeners.size === 0) {
      if (this.seen !== this.hub.stamp(this.entityType)) this.refresh()
      this.hub.add(this)
    }
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
      if (this.listeners.size === 0) this.hub.remove(this)
    }
  }

  /** @internal */
  abstract refresh(): boolean
  /** @internal */
  abstract apply(changes: Changes): boolean
  protected abstract value(): V

  /** Up to date with the hub as of now. */
  protected caughtUp() {
    this.seen = this.hub.stamp(this.entityType)
  }

  /** Each listener hears `value`; one listener's error stops neither the others nor the hub. */
  protected tell(value: V) {
    for (const l of [...this.listeners]) {
      try {
        l(value)
      } catch (e) {
        queueMicrotask(() => {
          throw e
        })
      }
    }
  }
}

/**
 * One query kept up to date. `current` is stable until the window's rows change; `subscribe`
 * hears each new result. It follows changes only while someone listens; read while nobody does,
 * it catches up (one re-run) if anything changed since.
 */
export class LiveQuery<T> extends Live<readonly Row<T>[]> {
  private sorted: Row<T>[] = []
  private byId = new Map<string, Row<T>>()
  private result: readonly Row<T>[] = []

  /** @internal */
  constructor(
    entityType: string,
    private readonly plan: Plan<T>,
    private readonly source: RowSource<T>,
    hub: LiveHub,
  ) {
    super(entityType, hub)
  }

  protected value(): readonly Row<T>[] {
    return this.result
  }

  /** @internal a full re-run (first use, or after a reload); unchanged rows keep their object. */
  refresh(): boolean {
    const rows: Row<T>[] = []
    const byId = new Map<string, Row<T>>()
    for (const r of this.source.all()) {
      if (!this.plan.matches(r.value, r.id)) continue
      const old = this.byId.get(r.id)
      const row = old && sameJson(old.value, r.value) ? old : r
      rows.push(row)
      byId.set(r.id, row)
    }
    this.sorted = rows.sort(this.plan.compare)
    this.byId = byId
    this.caughtUp()
    return this.publish()
  }

  /** @internal entities of this type changed */
  apply(changes: Changes): boolean {
    for (const id of changes.ids) {
      const value = changes.value(id) as T | undefined
      const old = this.byId.get(id)
      if (old && value !== undefined && sameJson(old.value, value)) continue
      if (old) {
        this.sorted.splice(this.indexOf(old), 1)
        this.byId.delete(id)
      }
      if (value !== undefined && this.plan.matches(value, id)) {
        const row: Row<T> = { id, value }
        this.sorted.splice(insertionPoint(this.sorted, row, this.plan.compare), 0, row)
        this.byId.set(id, row)
      }
    }
    this.caughtUp()
    return this.publish()
  }

  private indexOf(row: Row<T>): number {
    let i = insertionPoint(this.sorted, row, this.plan.compare) - 1
    while (i >= 0 && this.sorted[i] !== row) i--
    if (i < 0) throw new Error('live query: a row is missing from its order')
    return i
  }

  /** Take the new window; tell the listeners if its rows changed. */
  private publish(): boolean {
    const next = this.plan.window(this.sorted)
    const prev = this.result
    if (next.length === prev.length && next.every((r, i) => r === prev[i])) return false
    this.result = Object.freeze(next)
    this.tell(this.result)
    return true
  }
}

/** One entity kept up to date: `current` is its value (a new object only when it changed). */
export class LiveEntity<T> extends Live<T | undefined> {
  private latest: T | undefined

  /** @internal */
  constructor(
    entityType: string,
    readonly entityId: string,
    private readonly read: () => T | undefined,
    hub: LiveHub,
  ) {
    super(entityType, hub)
  }

  protected value(): T | undefined {
    return this.latest
  }

  /** @internal */
  refresh(): boolean {
    return this.take(this.read())
  }

  /** @internal */
  apply(changes: Changes): boolean {
    if (!changes.has(this.entityId)) {
      this.caughtUp()
      return false
    }
    return this.take(changes.value(this.entityId) as T | undefined)
  }

  private take(value: T | undefined): boolean {
    this.caughtUp()
    if (sameJson(value, this.latest)) return false
    this.latest = value
    this.tell(value)
    return true
  }
}

/** What changed of one type: the ids, and each one's new value, read on first ask. */
export class Changes {
  private values = new Map<string, unknown>()
  private readonly set: Set<string>

  constructor(
    private readonly entityType: string,
    readonly ids: ReadonlyArray<string>,
    private readonly read: (entityType: string, entityId: string) => unknown,
  ) {
    this.set = new Set(ids)
  }

  has(id: string): boolean {
    return this.set.has(id)
  }

  /** The entity's value now (`undefined`: gone). */
  value(id: string): unknown {
    if (!this.values.has(id)) this.values.set(id, this.read(this.entityType, id))
    return this.values.get(id)
  }
}

/** @internal what the hub drives */
export interface Follower {
  readonly entityType: string
  apply(changes: Changes): boolean
  refresh(): boolean
}

/**
 * The live queries and entities of one client, by type. The client tells it what changed; it
 * reads each changed entity once, however many followers its type has.
 */
export class LiveHub {
  /** Bumped by a reload; `versions` by each change of a type. A query that is not listening
   * compares its type's stamp to know whether it is stale. */
  private epoch = 0
  private versions = new Map<string, number>()
  private byType = new Map<string, Set<Follower>>()

  constructor(private readonly read: (entityType: string, entityId: string) => unknown) {}

  add(q: Follower) {
    let set = this.byType.get(q.entityType)
    if (!set) this.byType.set(q.entityType, (set = new Set()))
    set.add(q)
  }

  remove(q: Follower) {
    const set = this.byType.get(q.entityType)
    set?.delete(q)
    if (set?.size === 0) this.byType.delete(q.entityType)
  }

  stamp(entityType: string): string {
    return `${this.epoch}.${this.versions.get(entityType) ?? 0}`
  }

  /** These entities changed. */
  changed(refs: ReadonlyArray<{ entityType: string; entityId: string }>) {
    for (const type of new Set(refs.map((r) => r.entityType))) this.versions.set(type, (this.versions.get(type) ?? 0) + 1)
    const byType = new Map<string, string[]>()
    for (const { entityType, entityId } of refs) {
      if (!this.byType.has(entityType)) continue
      let ids = byType.get(entityType)
      if (!ids) byType.set(entityType, (ids = []))
      ids.push(entityId)
    }
    for (const [type, ids] of byType) {
      const changes = new Changes(type, [...new Set(ids)], this.read)
      for (const q of [...(this.byType.get(type) ?? [])]) q.apply(changes)
    }
  }

  /** Anything may have changed (another tab's writes were re-read): every query re-runs. */
  reloaded() {
    this.epoch++
    for (const set of [...this.byType.values()]) for (const q of [...set]) q.refresh()
  }
}
