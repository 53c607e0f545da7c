/**
 * @pf2/sync/react — React bindings (React ≥ 18): every hook reads through
 * `useSyncExternalStore`, and a component re-renders only when its own result changed.
 *
 * ```tsx
 * <SyncProvider client={client}><App /></SyncProvider>
 *
 * const open = useQuery('todo', { where: { done: false }, orderBy: { createdAt: 'asc' } })
 * const todo = useEntity('todo', id)
 * const { status, pendingCount, progress } = useSyncStatus()
 * ```
 *
 * Types: declare your schema once and every hook is checked against it —
 * `declare module '@pf2/sync/react' { interface Register { schema: AppSchema } }`.
 * See docs/api/react.md.
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react'
// Types only: this entry point adds no code of the base package to an app's bundle.
import type { AnySchema, PresenceChange, Query, RoomMessage, Row, Schema, Status, SyncClient, SyncEvent, SyncProgress, TypeName } from './index.js'
import type { DocHandle, DocOptions } from './automerge.js'

/** Augment it to type the hooks: `interface Register { schema: AppSchema }`. */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface Register {}

/** The schema the hooks are checked against (see {@link Register}). */
export type RegisteredSchema = Register extends { schema: infer S extends Schema } ? S : AnySchema

type Client = SyncClient<RegisteredSchema>

const ClientContext = createContext<SyncClient<any> | null>(null)

/** Makes `client` the one the hooks below it use. */
export function SyncProvider(props: { client: SyncClient<any>; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children)
}

/** The client of the nearest {@link SyncProvider}. */
export function useSyncClient(): Client {
  const client = useContext(ClientContext)
  if (!client) throw new Error('useSyncClient: no <SyncProvider client={…}> above this component')
  return client
}

/** Anything with a stable `current` and a `subscribe` (the client's live queries and entities). */
interface Source<T> {
  readonly current: T
  subscribe(listener: () => void): () => void
}

function useSource<T>(source: Source<T>): T {
  const subscribe = useCallback((cb: () => void) => source.subscribe(cb), [source])
  const snapshot = useCallback(() => source.current, [source])
  return useSyncExternalStore(subscribe, snapshot, snapshot)
}

const fnIds = new WeakMap<Function, number>()
let nextFnId = 0

/** A query's identity: equal queries (by value; predicates by identity) are one key. */
function queryKey(query: unknown): string {
  return JSON.stringify(query ?? {}, (_k, v) => {
    if (typeof v !== 'function') return v
    let id = fnIds.get(v)
    if (id === undefined) fnIds.set(v, (id = nextFnId++))
    return { fn: id }
  })
}

/**
 * The rows of a live query, kept up to date. The array (and each unchanged row) keeps its
 * identity until the result changes, so the component renders only then. The query is compared
 * by value each render; a `where` predicate by identity — define it outside the component, wrap
 * it in `useCallback`, or pass `deps` (the query is then rebuilt only when they change).
 */
export function useQuery<K extends TypeName<RegisteredSchema>>(
  entityType: K,
  query: Query<RegisteredSchema[K]> = {},
  deps?: ReadonlyArray<unknown>,
): ReadonlyArray<Row<RegisteredSchema[K]>> {
  const client = useSyncClient()
  const key = deps ? depsKey(deps) : queryKey(query)
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const live = useMemo(() => client.live(entityType, query), [client, entityType, key])
  return useSource(live)
}

const depIds = new WeakMap<object, number>()
function depsKey(deps: ReadonlyArray<unknown>): string {
  return `deps:${deps
    .map((d) => {
      if ((typeof d !== 'object' && typeof d !== 'function') || d === null) return JSON.stringify(d) ?? 'undefined'
      let id = depIds.get(d)
      if (id === undefined) depIds.set(d, (id = nextFnId++))
      return `#${id}`
    })
    .join(',')}`
}

/** One entity's fields (`undefined` while it does not exist), re-rendering when it changes. */
export function useEntity<K extends TypeName<RegisteredSchema>>(entityType: K, entityId: string): RegisteredSchema[K] | undefined {
  const client = useSyncClient()
  const live = useMemo(() => client.liveEntity(entityType, entityId), [client, entityType, entityId])
  return useSource(live)
}

export interface SyncStatus {
  status: Status
  /** Operations made here and not yet acknowledged by the server. */
  pendingCount: number
  /** The first sync of a large tenant, while it runs (`null` otherwise). */
  progress: SyncProgress | null
}

/** One store per client, shared by every `useSyncStatus`. */
class StatusStore implements Source<SyncStatus> {
  current: SyncStatus
  private listeners = new Set<() => void>()
  private off: Array<() => void> = []

  constructor(private readonly client: SyncClient<any>) {
    this.current = { status: client.status, pendingCount: client.pendingCount, progress: null }
  }

  subscribe(listener: () => void): () => void {
    if (this.listeners.size === 0) {
      const c = this.client
      this.off = [
        c.on('status', () => this.update({})),
        c.on('pending', () => this.update({})),
        c.on('change', () => this.update({})),
        c.on('progress', (p) => this.update({ progress: p.received >= p.total ? null : p })),
      ]
      this.update({})
    }
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
      if (this.listeners.size === 0) this.off.forEach((f) => f())
    }
  }

  private update(part: Partial<SyncStatus>) {
    const next: SyncStatus = { ...this.current, status: this.client.status, pendingCount: this.client.pendingCount, ...part }
    const p = this.current.progress
    const q = next.progress
    const same =
      next.status === this.current.status &&
      next.pendingCount === this.current.pendingCount &&
      (p === q || (p !== null && q !== null && p.received === q.received && p.total === q.total))
    if (same) return
    this.current = next
    for (const l of [...this.listeners]) l()
  }
}

const statusStores = new WeakMap<SyncClient<any>, StatusStore>()

/** The connection's status, the pending count and the first sync's progress. */
export function useSyncStatus(): SyncStatus {
  const client = useSyncClient()
  let store = statusStores.get(client)
  if (!store) statusStores.set(client, (store = new StatusStore(client)))
  return useSource(store)
}

/** Joins per client and room, counted: the room is left when its last user unmounts. */
const joins = new WeakMap<SyncClient<any>, Map<string, number>>()

function useJoined(client: SyncClient<any>, roomId: string) {
  useEffect(() => {
    let counts = joins.get(client)
    if (!counts) joins.set(client, (counts = new Map()))
    const n = counts.get(roomId) ?? 0
    counts.set(roomId, n + 1)
    const join = () => client.rooms.join(roomId)
    if (n === 0) join()
    // Membership survives reconnects on the server; a join made while offline is sent again.
    const off = client.on('status', (s) => s === 'live' && join())
    return () => {
      off()
      const left = (counts!.get(roomId) ?? 1) - 1
      if (left > 0) counts!.set(roomId, left)
      else {
        counts!.delete(roomId)
        client.rooms.leave(roomId)
      }
    }
  }, [client, roomId])
}

/** Presence per room: one store per (client, room), fed by the client's presence frames. */
class PresenceStore implements Source<ReadonlyArray<PresenceChange>> {
  current: ReadonlyArray<PresenceChange> = []
  private byWho = new Map<string, PresenceChange>()
  private listeners = new Set<() => void>()
  private off?: () => void

  constructor(
    private readonly client: SyncClient<any>,
    private readonly roomId: string,
  ) {}

  subscribe(listener: () => void): () => void {
    if (this.listeners.size === 0) {
      const offChange = this.client.presence.on('change', (p) => {
        if (p.roomId !== undefined && p.roomId !== this.roomId) return
        const who = `${p.userId}\u0000${p.clientId ?? ''}`
        if (p.status === 'offline') this.byWho.delete(who)
        else this.byWho.set(who, p)
        this.publish()
      })
      // Without its socket this client hears nothing: the list empties, and the room's current
      // presence comes again with the join made on reconnecting.
      const offStatus = this.client.on('status', (s) => {
        if ((s === 'offline' || s === 'connecting' || s === 'degraded') && this.byWho.size) {
          this.byWho.clear()
          this.publish()
        }
      })
      this.off = () => (offChange(), offStatus())
    }
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
      if (this.listeners.size === 0) this.off?.()
    }
  }

  private publish() {
    this.current = [...this.byWho.values()]
    for (const l of [...this.listeners]) l()
  }
}

const presenceStores = new WeakMap<SyncClient<any>, Map<string, PresenceStore>>()

/**
 * Who is in `roomId` (joining it while mounted) and a way to announce yourself there. Class A:
 * best effort — the list may lag or empty while offline; never build on it for correctness.
 */
export function usePresence(roomId: string): {
  others: ReadonlyArray<PresenceChange>
  set: (p: { status: 'online' | 'away' | 'offline'; metadata?: unknown }) => boolean
} {
  const client = useSyncClient()
  useJoined(client, roomId)
  let stores = presenceStores.get(client)
  if (!stores) presenceStores.set(client, (stores = new Map()))
  let store = stores.get(roomId)
  if (!store) stores.set(roomId, (store = new PresenceStore(client, roomId)))
  const others = useSource(store)
  const set = useCallback((p: { status: 'online' | 'away' | 'offline'; metadata?: unknown }) => client.presence.set({ ...p, roomId }), [client, roomId])
  return { others, set }
}

/**
 * A room while mounted: `messages` holds the last `keep` (default 50) received, `send` sends
 * one to the others (`false` when not connected: room messages are never queued).
 */
export function useRoom(
  roomId: string,
  options: { keep?: number; onMessage?: (m: RoomMessage) => void } = {},
): { messages: ReadonlyArray<RoomMessage>; send: (payload: unknown, messageType?: string) => boolean } {
  const client = useSyncClient()
  useJoined(client, roomId)
  const [messages, setMessages] = useState<ReadonlyArray<RoomMessage>>([])
  const onMessage = useRef(options.onMessage)
  onMessage.current = options.onMessage
  const keep = options.keep ?? 50
  useEffect(
    () =>
      client.rooms.on('message', (m) => {
        if (m.roomId !== roomId) return
        onMessage.current?.(m)
        setMessages((list) => [...list, m].slice(-keep))
      }),
    [client, roomId, keep],
  )
  const send = useCallback((payload: unknown, messageType?: string) => client.rooms.send(roomId, payload, messageType), [client, roomId])
  return { messages, send }
}

/**
 * Class B events matching `pattern` while mounted, in order, each once: the last `keep`
 * (default 50), and `onEvent` for each. Resumes after the last event this client saw.
 */
export function useEvents(
  pattern: string | string[],
  options: { keep?: number; onEvent?: (e: SyncEvent) => void; fromEventId?: number } = {},
): ReadonlyArray<SyncEvent> {
  const client = useSyncClient()
  const [events, setEvents] = useState<ReadonlyArray<SyncEvent>>([])
  const onEvent = useRef(options.onEvent)
  onEvent.current = options.onEvent
  const keep = options.keep ?? 50
  const key = Array.isArray(pattern) ? pattern.join('\u0000') : pattern
  useEffect(
    () =>
      client.subscribe(
        key.split('\u0000'),
        (e) => {
          onEvent.current?.(e)
          setEvents((list) => [...list, e].slice(-keep))
        },
        options.fromEventId === undefined ? {} : { fromEventId: options.fromEventId },
      ),
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [client, key, keep],
  )
  return events
}

export interface UseDoc<T> {
  /** The document as plain JSON (a new object after each change), `undefined` until loaded. */
  value: T | undefined
  /** The handle, to `change` it; `undefined` until loaded. */
  handle: DocHandle | undefined
  error: Error | undefined
}

/** A document's users per client: its handle is closed a moment after the last one unmounts. */
const docUsers = new WeakMap<SyncClient<any>, Map<string, { users: number; closing?: ReturnType<typeof setTimeout> }>>()

/**
 * A collaborative document (loads `@pf2/sync/automerge` on first use), re-rendering on every
 * change, local or remote. `options.init` is the document's genesis (see `DocOptions`).
 */
export function useDoc<T = Record<string, unknown>>(documentId: string, options?: DocOptions): UseDoc<T> {
  const client = useSyncClient()
  const [state, setState] = useState<UseDoc<T>>({ value: undefined, handle: undefined, error: undefined })
  const init = useRef(options?.init)
  useEffect(() => {
    let users = docUsers.get(client)
    if (!users) docUsers.set(client, (users = new Map()))
    const u = users.get(documentId) ?? { users: 0 }
    clearTimeout(u.closing)
    u.users++
    users.set(documentId, u)
    let live = true
    let off = () => {}
    client.doc(documentId, init.current ? { init: init.current } : undefined).then(
      (handle) => {
        if (!live) return
        const read = () => setState({ value: handle.value<T>(), handle, error: undefined })
        off = handle.on('change', read)
        read()
      },
      (error) => live && setState({ value: undefined, handle: undefined, error }),
    )
    return () => {
      live = false
      off()
      if (--u.users > 0) return
      // A moment's grace: a remount (StrictMode, a route change) keeps the open replica.
      u.closing = setTimeout(() => {
        if (u.users > 0) return
        users!.delete(documentId)
        client.doc(documentId).then((h) => h.close(), () => {})
      }, 1_000)
    }
  }, [client, documentId])
  return state
}
