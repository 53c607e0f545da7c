/**
 * @pf2/sync — offline-first sync for the browser.
 *
 * ```ts
 * const client = await createSyncClient({ url, tenantId, clientId, getToken })
 * await client.mutate('todo', 't1', { title: 'milk', done: false }) // works offline
 * client.on('change', () => render(client.query('todo')))
 * ```
 *
 * Everything a client decides (queueing, retries, conflicts, the optimistic view) happens in
 * sdk-core, compiled to WebAssembly; this module is the typed surface over it. See docs/api/js.md.
 */
import init, { SyncEngine } from './wasm/pf2_sync.js'
// Types only: the documents module (and its WebAssembly) loads on the first `client.doc`.
import type { DocHandle, DocOptions, Documents, DocumentsOptions } from './automerge.js'
import { SyncError } from './errors.js'
import type { DocumentLink, Status } from './link.js'
import { LiveEntity, LiveHub, LiveQuery, Plan, type Query, type Row } from './query.js'

export type { Status }
export type { Condition, OrderKey, Query, Row, WhereFields } from './query.js'
export { LiveEntity, LiveQuery } from './query.js'

export type Fields = Record<string, unknown>

/**
 * What each entity type's fields are, for `createSyncClient<MySchema>()`:
 * `{ todo: { title: string; done: boolean; note?: string } }`. Without one, every type is
 * `Fields` and any name goes.
 */
export type Schema = Record<string, object>

/** The schema of a client made without one: any type name, any fields. */
export type AnySchema = Record<string, Fields>

/** The entity types of a schema. */
export type TypeName<S> = keyof S & string

/** A change to an entity: some of its fields; `null` removes an optional one. */
export type Patch<T> = { [K in keyof T]?: T[K] | (undefined extends T[K] ? null : never) }

export interface SyncOptions {
  /** The sync server, e.g. `https://sync.example.com` (WebSocket and REST share it). */
  url: string
  tenantId: string
  /** Stable per device/tab profile: the queue and cache are stored under it. */
  clientId: string
  /** Returns a JWT; called on connect and again whenever the server refuses the token. */
  getToken: () => string | Promise<string>
  /** IndexedDB database name (default `pf2-sync:<tenant>:<client>`). */
  dbName?: string
  /**
   * Follow the browser's `online` / `offline` events (default `true`). With `false`, call
   * `client.connect()` / `client.disconnect()` yourself.
   */
  autoConnect?: boolean
  /** WebSocket failures in a row before falling back to HTTP long-polling (default 3). */
  wsFailuresBeforeDegraded?: number
  /** While degraded, how often to try the WebSocket again, in ms (default 60,000). */
  websocketRetryMs?: number
  /**
   * Share one connection among the tabs of this origin that use the same tenant and client id
   * (default `true`): one tab owns it (Web Locks), the others go through it (BroadcastChannel).
   */
  multiTab?: boolean
  /** Where the `.wasm` file is served from, when a bundler moved it. */
  wasmUrl?: string | URL
  /**
   * Partial sync under the server's sync rules: only these of the channels you may read
   * (default: all of them). Change it later with `client.channels.set`.
   */
  channels?: string[]
}

export interface EntityRef {
  entityType: string
  entityId: string
}

/** A Class B event from the tenant's log, in order, each once. */
export interface SyncEvent {
  sequence: number
  eventId: string
  eventType: string
  tenantId: string
  timestamp: string
  payload: unknown
  metadata?: Record<string, unknown>
  schemaVersion?: number
}

export interface ConflictNotice {
  result: { operationId: string; status: string; resolution?: string; version?: number }
  conflict: unknown
}

/** How far a long sync has come (`client.on('progress', …)`). */
export interface SyncProgress {
  received: number
  total: number
}

export interface Rejection {
  operationId: string
  entityType: string
  entityId: string
  code: string
  message: string
}

/** A conflict recorded by a manual strategy, waiting for a person. */
export interface ManualConflict {
  conflictId: string
  entityType: string
  entityId: string
  operationId: string
  clientId: string
  fields: string[]
  serverState: Fields | null
  clientState: Fields | null
  serverVersion: number
  at: string
  status: 'open' | 'resolved'
  resolution?: string
}

export type ConflictChoice =
  | 'server'
  | 'client'
  | 'delete'
  | { merged: Fields }

export interface PresenceChange {
  userId: string
  clientId?: string
  status: 'online' | 'away' | 'offline'
  metadata?: unknown
  roomId?: string
}

export interface RoomMessage {
  messageId: string
  messageType: string
  senderId?: string
  roomId?: string
  payload: unknown
  metadata?: unknown
}

export interface TransactionResult {
  transactionId: string
  type: string
  status: 'confirmed' | 'failed'
  result: unknown
}

export { SyncError }

type Events = {
  status: (status: Status) => void
  change: (changed: EntityRef[]) => void
  conflict: (notice: ConflictNotice) => void
  rejected: (rejection: Rejection) => void
  /** A sync of more than one page (the first sync of a large tenant): entities received so far
   * of the total; the last report has `received === total`. */
  progress: (progress: SyncProgress) => void
  event: (event: SyncEvent) => void
  /** The number of operations queued and not yet acknowledged changed. */
  pending: (count: number) => void
  error: (error: { message: string }) => void
}

type Handler = (payload: any) => void

class Emitter {
  private handlers = new Map<string, Set<Handler>>()
  on(kind: string, h: Handler): () => void {
    let set = this.handlers.get(kind)
    if (!set) this.handlers.set(kind, (set = new Set()))
    set.add(h)
    return () => set!.delete(h)
  }
  emit(kind: string, payload: unknown) {
    for (const h of this.handlers.get(kind) ?? []) {
      try {
        h(payload)
      } catch (e) {
        // One app handler's bug must not stop the others or the engine.
        queueMicrotask(() => {
          throw e
        })
      }
    }
  }
}

let ready: Promise<unknown> | undefined

function loadWasm(url?: string | URL): Promise<unknown> {
  ready ??= init(url ? { module_or_path: url } : undefined)
  return ready
}

/**
 * Load and compile the WebAssembly module now (it is fetched from the network once). Call it at
 * startup in an app that may go offline before its first `createSyncClient`.
 */
export async function preload(wasmUrl?: string | URL): Promise<void> {
  await loadWasm(wasmUrl)
}

function uuid(): string {
  return crypto.randomUUID()
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Open a client: recovers whatever the last session left queued, then connects when online.
 * Give it your {@link Schema} (`createSyncClient<AppSchema>(…)`) and `tsc` checks every type
 * name, patch, read and query against it.
 */
export async function createSyncClient<S extends Schema = AnySchema>(options: SyncOptions): Promise<SyncClient<S>> {
  await loadWasm(options.wasmUrl)
  const emitter = new Emitter()
  let tabs: Tabs | undefined
  const engine = await SyncEngine.open(
    {
      url: options.url,
      tenantId: options.tenantId,
      clientId: options.clientId,
      dbName: options.dbName,
      wsFailuresBeforeDegraded: options.wsFailuresBeforeDegraded,
      websocketRetryMs: options.websocketRetryMs,
      channels: options.channels,
    },
    async () => await options.getToken(),
    (kind: string, payload: unknown) => tabs?.fromEngine(kind, payload),
  )
  tabs = new Tabs(engine, emitter, options)
  return new SyncClient<S>(engine, emitter, options, tabs)
}

type TabMessage =
  | { t: 'hello' }
  | { t: 'mutate'; rid: string; args: [string, string, Fields | null, string] }
  | { t: 'done'; rid: string; error?: string }
  | { t: 'subscribe'; patterns: string[]; from?: number }
  | { t: 'channels'; list: string[] | null }
  | { t: 'realtime'; frame: unknown }
  | { t: 'changed'; refs: unknown }
  | { t: 'event'; kind: string; payload: unknown }

/**
 * Several tabs, one connection: the tab holding the Web Lock owns the engine's connection and
 * its queue; the others send their mutations to it over a BroadcastChannel and re-read the
 * shared IndexedDB when it reports a change. When the owner closes, the next tab in the lock's
 * queue takes over and re-sends what was not answered (operation ids make that idempotent).
 */
class Tabs {
  owner = false
  private becameOwner!: () => void
  /** Resolves when this tab owns the connection. */
  readonly owned = new Promise<void>((resolve) => (this.becameOwner = resolve))
  private status: Status = 'offline'
  /** The owner's queue length, as it last told (in a tab that does not own the connection). */
  private pendingTold?: number
  private readonly channel?: BroadcastChannel
  private readonly waiting = new Map<string, { args: TabMessage & { t: 'mutate' }; resolve: () => void; reject: (e: Error) => void }>()
  private patterns = new Set<string>()
  private release?: () => void
  private retry?: ReturnType<typeof setInterval>
  private detachOnline: () => void = () => {}

  constructor(
    private readonly engine: SyncEngine,
    private readonly emitter: Emitter,
    private readonly options: SyncOptions,
  ) {
    const name = `pf2-sync:${options.tenantId}:${options.clientId}`
    if ((options.multiTab ?? true) && typeof BroadcastChannel !== 'undefined' && navigator.locks) {
      this.channel = new BroadcastChannel(name)
      this.channel.onmessage = (e) => this.onMessage(e.data as TabMessage)
      this.post({ t: 'hello' })
      navigator.locks.request(name, () => {
        this.promote()
        return new Promise<void>((resolve) => (this.release = resolve))
      })
    } else {
      this.promote()
    }
  }

  get currentStatus(): Status {
    return this.owner ? (this.engine.status as Status) : this.status
  }

  get pendingCount(): number {
    return this.owner ? this.engine.pendingCount : (this.pendingTold ?? this.engine.pendingCount)
  }

  private reloads: Promise<unknown> = Promise.resolve()

  /** Re-read IndexedDB; one at a time, in order, so an older read never lands after a newer. */
  private reload(): Promise<unknown> {
    this.reloads = this.reloads.then(() => this.engine.reload()).catch((e) => this.emitter.emit('error', { message: String(e) }))
    return this.reloads
  }

  private post(m: TabMessage) {
    this.channel?.postMessage(m)
  }

  private async promote() {
    await this.reload() // catch up with what the previous owner wrote
    this.emitter.emit('reloaded', null)
    this.owner = true
    this.becameOwner()
    clearInterval(this.retry)
    this.retry = undefined
    if (this.patterns.size) this.engine.subscribe([...this.patterns])
    if (this.options.autoConnect ?? true) {
      const online = () => this.engine.setOnline(true)
      const offline = () => this.engine.setOnline(false)
      addEventListener('online', online)
      addEventListener('offline', offline)
      this.detachOnline = () => {
        removeEventListener('online', online)
        removeEventListener('offline', offline)
      }
      if (navigator.onLine) this.engine.setOnline(true)
    }
    for (const [rid, w] of this.waiting) {
      this.waiting.delete(rid)
      const [type, id, patch, opId] = w.args.args
      this.engine.mutate(type, id, patch, opId).then(w.resolve, w.reject)
    }
    this.emitter.emit('status', this.engine.status)
  }

  /** An event of this tab's engine: the app hears it; as owner, the other tabs too. */
  fromEngine(kind: string, payload: unknown) {
    this.emitter.emit(kind, payload)
    if (!this.owner) return
    if (kind === 'change') {
      // Tell the others once it is in IndexedDB, where they read it.
      this.engine.flushed().then(() => this.post({ t: 'changed', refs: payload }))
    } else {
      this.post({ t: 'event', kind, payload })
    }
  }

  private async onMessage(m: TabMessage) {
    if (this.owner) {
      if (m.t === 'hello') {
        this.post({ t: 'event', kind: 'status', payload: this.engine.status })
        this.post({ t: 'event', kind: 'pending', payload: this.engine.pendingCount })
      }
      if (m.t === 'mutate') {
        const [type, id, patch, opId] = m.args
        this.engine.mutate(type, id, patch, opId).then(
          () => this.post({ t: 'done', rid: m.rid }),
          (e) => this.post({ t: 'done', rid: m.rid, error: String(e?.message ?? e) }),
        )
      }
      if (m.t === 'subscribe') this.subscribe(m.patterns, m.from)
      if (m.t === 'channels') this.engine.setChannels(m.list)
      if (m.t === 'realtime') this.engine.sendRealtime(m.frame)
      return
    }
    if (m.t === 'changed') {
      await this.reload()
      this.emitter.emit('change', m.refs)
    } else if (m.t === 'event') {
      if (m.kind === 'status') this.status = m.payload as Status
      if (m.kind === 'pending') this.pendingTold = m.payload as number
      this.emitter.emit(m.kind, m.payload)
    } else if (m.t === 'done') {
      const w = this.waiting.get(m.rid)
      if (!w) return
      this.waiting.delete(m.rid)
      if (m.error) return w.reject(new SyncError('MUTATION_FAILED', m.error))
      await this.reload()
      w.resolve()
    }
  }

  mutate(type: string, id: string, patch: Fields | null): Promise<void> {
    if (this.owner) return this.engine.mutate(type, id, patch, undefined)
    const args: TabMessage & { t: 'mutate' } = { t: 'mutate', rid: uuid(), args: [type, id, patch, uuid().replaceAll('-', '')] }
    return new Promise((resolve, reject) => {
      this.waiting.set(args.rid, { args, resolve, reject })
      this.post(args)
      // No owner yet, or it went away before answering: ask again until one answers (the
      // operation id keeps it from being queued twice).
      this.retry ??= setInterval(() => {
        for (const w of this.waiting.values()) this.post(w.args)
        if (!this.waiting.size) {
          clearInterval(this.retry)
          this.retry = undefined
        }
      }, 1_000)
    })
  }

  subscribe(patterns: string[], from?: number) {
    for (const p of patterns) this.patterns.add(p)
    if (!this.owner) this.post({ t: 'subscribe', patterns, from })
    else if (from === undefined) this.engine.subscribe([...this.patterns])
    else this.engine.subscribeFrom([...this.patterns], from)
  }

  sendRealtime(frame: unknown): boolean {
    if (this.owner) return this.engine.sendRealtime(frame)
    this.post({ t: 'realtime', frame })
    return this.status === 'live'
  }

  setOnline(online: boolean) {
    if (this.owner) this.engine.setOnline(online)
  }

  setChannels(list: string[] | null) {
    if (this.owner) this.engine.setChannels(list)
    else this.post({ t: 'channels', list })
  }

  close() {
    this.detachOnline()
    clearInterval(this.retry)
    this.channel?.close()
    this.release?.()
  }
}

/**
 * Partial sync under the server's sync rules (docs/api/sync-rules.md): which of the channels
 * you may read this client syncs.
 */
export class Channels {
  /** @internal */
  constructor(
    private readonly engine: SyncEngine,
    private readonly tabs: Tabs,
  ) {}

  /**
   * Sync only `list` of the channels granted (`null`: all). Entities of an added channel arrive
   * whole; those only a removed channel gave are forgotten, here and in IndexedDB, with a
   * `change` event.
   */
  set(list: string[] | null): void {
    this.tabs.setChannels(list)
  }

  /** The channels asked for (`null`: all granted). */
  get requested(): string[] | null {
    return (this.engine.channels as string[] | null | undefined) ?? null
  }

  /** The channels the local state was last synced for (`null`: the whole tenant, or no rules). */
  get synced(): string[] | null {
    const scope = this.engine.scope as { channels?: string[] } | null | undefined
    return scope?.channels ?? null
  }
}

export class SyncClient<S extends Schema = AnySchema> {
  readonly presence: Presence
  readonly rooms: Rooms
  readonly conflicts: Conflicts
  readonly channels: Channels
  private readonly hub: LiveHub

  /** @internal use {@link createSyncClient} */
  constructor(
    private readonly engine: SyncEngine,
    private readonly emitter: Emitter,
    private readonly options: SyncOptions,
    private readonly tabs: Tabs,
  ) {
    this.presence = new Presence(tabs, emitter)
    this.rooms = new Rooms(tabs, emitter)
    this.conflicts = new Conflicts(this as SyncClient<any>)
    this.channels = new Channels(engine, tabs)
    this.hub = new LiveHub((type, id) => engine.get(type, id))
    // Before the app's handlers: a handler reading a live query sees it up to date.
    emitter.on('change', (refs: Array<{ entityType: string; entityId: string }>) => this.hub.changed(refs))
    emitter.on('reloaded', () => this.hub.reloaded())
  }

  /** Whether this tab owns the connection (the others go through it). */
  get isOwner(): boolean {
    return this.tabs.owner
  }

  get status(): Status {
    return this.tabs.currentStatus
  }

  get clientId(): string {
    return this.engine.clientId
  }

  /** Operations made locally and not yet acknowledged by the server. */
  get pendingCount(): number {
    return this.tabs.pendingCount
  }

  on<K extends keyof Events>(kind: K, handler: Events[K]): () => void {
    return this.emitter.on(kind, handler as Handler)
  }

  /** Connect now (with `autoConnect: false`). */
  connect(): void {
    this.tabs.setOnline(true)
  }

  /** Disconnect; mutations keep queueing locally. */
  disconnect(): void {
    this.tabs.setOnline(false)
  }

  /**
   * Class C: change an entity. Visible at once in `get` / `query`, durable in IndexedDB when the
   * promise resolves, sent when connected, exactly once. `patch` sets fields (creating the entity
   * when unknown locally); `null` deletes it.
   */
  mutate<K extends TypeName<S>>(entityType: K, entityId: string, patch: Patch<S[K]> | null): Promise<void> {
    return this.tabs.mutate(entityType, entityId, patch as Fields | null)
  }

  /** The local view of an entity (confirmed state plus own unconfirmed changes). */
  get<K extends TypeName<S>>(entityType: K, entityId: string): S[K] | undefined {
    return this.engine.get(entityType, entityId) as S[K] | undefined
  }

  /**
   * Entities of a type in the local view: all of them by id, or those matching `query.where`
   * (field equality, ranges, `in`, or a predicate), in `query.orderBy` order, windowed by
   * `offset` and `limit`. Runs once; {@link live} and {@link watch} keep a query up to date.
   */
  query<K extends TypeName<S>>(entityType: K, query?: Query<S[K]>): Array<Row<S[K]>> {
    const rows = this.engine.query(entityType) as Array<Row<S[K]>>
    return query ? new Plan(query).run(rows) : rows
  }

  /**
   * A live query: `current` is the result now, `subscribe(cb)` hears each new one. Maintained
   * from each change, not re-run; its array is new only when its rows changed, and an unchanged
   * row keeps its object. It follows changes while it has subscribers.
   */
  live<K extends TypeName<S>>(entityType: K, query: Query<S[K]> = {}): LiveQuery<S[K]> {
    return new LiveQuery(entityType, new Plan(query), { all: () => this.engine.query(entityType) as Array<Row<S[K]>> }, this.hub)
  }

  /**
   * Call `callback` whenever the result of `query` changes (not for changes it does not show);
   * returns the way to stop. The result now is `client.query(type, query)`.
   */
  watch<K extends TypeName<S>>(entityType: K, query: Query<S[K]>, callback: (rows: ReadonlyArray<Row<S[K]>>) => void): () => void {
    return this.live(entityType, query).subscribe(callback)
  }

  /** One entity kept up to date (`current`, `subscribe`): a new value only when it changed. */
  liveEntity<K extends TypeName<S>>(entityType: K, entityId: string): LiveEntity<S[K]> {
    return new LiveEntity(entityType, entityId, () => this.get(entityType, entityId), this.hub)
  }

  /** Resolves when every change so far is in IndexedDB. */
  flushed(): Promise<void> {
    return this.engine.flushed()
  }

  /**
   * Resolves when the queue is empty (everything acknowledged) and the local view has caught up
   * with what was acknowledged (not `syncing`: the confirming pull has come back), or rejects
   * after `timeoutMs`.
   */
  async settled(timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs
    while (this.engine.pendingCount > 0 || this.status === 'syncing') {
      if (Date.now() > until) throw new SyncError('TIMEOUT', `${this.engine.pendingCount} operations still queued (status ${this.status})`)
      await new Promise<void>((resolve) => {
        const off = this.on('change', () => {
          off()
          resolve()
        })
        setTimeout(() => {
          off()
          resolve()
        }, 250)
      })
    }
  }

  /**
   * Class B: events matching `pattern` (`order.*`, `*`), in order, each once, resuming after the
   * last event this client saw — across reloads. `fromEventId` replays from a sequence number
   * instead (0: from the beginning the server retains).
   */
  subscribe(
    pattern: string | string[],
    handler: (event: SyncEvent) => void,
    opts: { fromEventId?: number } = {},
  ): () => void {
    const patterns = Array.isArray(pattern) ? pattern : [pattern]
    // The engine follows the union of every subscription (of every tab); each handler hears
    // only its own patterns.
    let last = opts.fromEventId ?? this.engine.lastEventId ?? 0
    this.tabs.subscribe(patterns, opts.fromEventId)
    const matchers = patterns.map((p) => new RegExp(`^${p.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`))
    return this.on('event', (e) => {
      // Another subscription's rewind replays older events: this handler skips what it had.
      if (e.sequence <= last || !matchers.some((m) => m.test(e.eventType))) return
      last = e.sequence
      handler(e)
    })
  }

  /**
   * Class D: a critical transaction, over REST with an idempotency key (never over the socket).
   * Resolves with the server's confirmation; rejects if it failed. Retrying with the same
   * `idempotencyKey` never executes it twice.
   */
  async transact(
    type: string,
    payload: unknown,
    opts: { idempotencyKey?: string; timeoutMs?: number } = {},
  ): Promise<TransactionResult> {
    const key = opts.idempotencyKey ?? uuid()
    const created = await this.rest('POST', '/api/transactions', { type, payload }, { 'Idempotency-Key': key })
    const id = created.transactionId as string
    const until = Date.now() + (opts.timeoutMs ?? 30_000)
    for (let wait = 100; ; wait = Math.min(wait * 2, 2_000)) {
      const t = await this.rest('GET', `/api/transactions/${encodeURIComponent(id)}`)
      if (t.status === 'confirmed') return t as TransactionResult
      if (t.status === 'failed') throw new SyncError('TRANSACTION_FAILED', JSON.stringify(t.result ?? null))
      if (Date.now() > until) throw new SyncError('TIMEOUT', `transaction ${id} still ${t.status}`)
      await sleep(wait)
    }
  }

  /**
   * @internal an authenticated REST call to the server, within its rate limit: it waits for its
   * budget (sdk-core's mirror of the server's, corrected by every answer's RateLimit headers),
   * and a 429 is sent again once, after its Retry-After — never retried in a storm.
   */
  async rest(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<any> {
    const int = (v: string | null) => (v !== null && /^\d+$/.test(v.trim()) ? Number(v) : undefined)
    for (;;) {
      await this.engine.restTurn(method, path)
      const res = await fetch(new URL(path, this.options.url), {
        method,
        headers: {
          authorization: `Bearer ${await this.options.getToken()}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      })
      const h = res.headers
      this.engine.restAnswered(method, path, res.status, h.get('RateLimit-Policy') ?? undefined, int(h.get('RateLimit-Remaining')), int(h.get('Retry-After')))
      const text = await res.text()
      // Refused for the budget: the lane is closed for its Retry-After; restTurn waits it out.
      if (res.status === 429) continue
      const json = text ? JSON.parse(text) : null
      if (!res.ok) {
        const e = json?.error ?? {}
        throw new SyncError(e.code ?? 'HTTP_ERROR', e.message ?? `${method} ${path}: ${res.status}`, res.status)
      }
      return json
    }
  }

  private documents?: Promise<Documents>

  /**
   * A collaborative document (Automerge): edits apply at once, persist in IndexedDB and sync
   * while live. The first call loads the documents module (`@pf2/sync/automerge`, a second
   * WebAssembly module); `init` makes the document's initial structure (see `DocOptions`), the
   * module options apply to the first call. See {@link DocHandle}.
   * Documents live in the tab that owns the connection: in another tab of the same client
   * this waits until that tab closes and this one takes over.
   */
  async doc(documentId: string, options?: DocOptions & DocumentsOptions): Promise<DocHandle> {
    this.documents ??= import('./automerge.js').then((m) => m.Documents.attach(this, options))
    this.documents.catch(() => (this.documents = undefined))
    return (await this.documents).doc(documentId, options)
  }

  /** @internal what the documents module needs of this client */
  documentLink(): DocumentLink {
    const tabs = this.tabs
    return {
      tenantId: this.options.tenantId,
      clientId: this.engine.clientId,
      owned: tabs.owned,
      status: tabs.currentStatus,
      send: (frame) => tabs.sendRealtime(frame),
      // Documents live in the owner tab only (see `owned`), next to the engine.
      pacedSync: (id, build) => this.engine.pacedSync(id, build),
      rest: (method, path, body) => this.rest(method, path, body),
      watchDocuments: (versions) => this.engine.watchDocuments(versions),
      onDocuments: (h) => this.emitter.on('documents', h),
      onFrame: (h) => this.emitter.on('frame', h),
      onStatus: (h) => this.emitter.on('status', h),
    }
  }

  /** Disconnect and release the database handle; the data stays for the next session. */
  close(): void {
    this.documents?.then((d) => d.close()).catch(() => {})
    this.tabs.close()
    this.engine.close()
    this.engine.free()
  }
}

/** Class A: who is here. Best effort: presence is never queued and may vanish. */
export class Presence {
  constructor(private readonly tabs: Tabs, private readonly emitter: Emitter) {}

  /** Announce this client's status (to its rooms); `false` when not connected. */
  set(p: { status: 'online' | 'away' | 'offline'; metadata?: unknown; roomId?: string }): boolean {
    return this.tabs.sendRealtime({ type: 'presence', ...p })
  }

  on(kind: 'change', handler: (p: PresenceChange) => void): () => void {
    return this.emitter.on('frame', (f: any) => {
      if (f?.type === 'presence' && kind === 'change') handler(f as PresenceChange)
    })
  }
}

/** Rooms: membership belongs to the client id and survives reconnects. */
export class Rooms {
  constructor(private readonly tabs: Tabs, private readonly emitter: Emitter) {}

  join(roomId: string): boolean {
    return this.tabs.sendRealtime({ type: 'join_room', roomId })
  }

  leave(roomId: string): boolean {
    return this.tabs.sendRealtime({ type: 'leave_room', roomId })
  }

  /** Send to everyone else in the room; `false` when not connected (not queued). */
  send(roomId: string, payload: unknown, messageType = 'message'): boolean {
    return this.tabs.sendRealtime({ type: 'message', roomId, messageType, payload })
  }

  on(kind: 'message', handler: (m: RoomMessage) => void): () => void {
    return this.emitter.on('frame', (f: any) => {
      if (f?.type === 'message' && kind === 'message') handler(f as RoomMessage)
    })
  }
}

/** Manual-strategy conflicts, held for a person to decide. */
export class Conflicts {
  constructor(private readonly client: SyncClient) {}

  async list(status: 'open' | 'resolved' | 'all' = 'open'): Promise<ManualConflict[]> {
    const r = await this.client.rest('GET', `/api/reconciliation/conflicts?status=${status}`)
    return r.conflicts as ManualConflict[]
  }

  /** Decide a conflict; the decision syncs back to every client as a normal change. */
  async resolve(conflictId: string, choice: ConflictChoice): Promise<void> {
    const body = typeof choice === 'string' ? { choice } : { choice: 'merged', state: choice.merged }
    await this.client.rest('POST', `/api/reconciliation/conflicts/${encodeURIComponent(conflictId)}/resolve`, body)
  }
}
