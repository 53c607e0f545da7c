/**
 * @pf2/sync/automerge — collaborative documents (Automerge CRDTs) over a PF-2 Sync client.
 *
 * ```ts
 * const doc = await client.doc('notes-42')            // loads this module on first use
 * doc.change((d) => d.putText(['body'], 'Hello'))       // once, by whoever creates it
 * doc.change((d) => d.splice(['body'], 5, 0, ', world'))
 * doc.on('change', () => render(doc.text(['body'])))
 * ```
 *
 * Edits apply at once and are kept in IndexedDB (increments, compacted into one save past a
 * threshold), online or not; while the client is live they sync with the server over its
 * WebSocket (Automerge's sync protocol, `doc_sync` frames), so a reconnecting replica sends
 * and receives only what the other side lacks. Concurrent edits merge; nothing is lost.
 *
 * This entry point loads a second WebAssembly module (Automerge, ≈ twice the base module); an
 * app that never opens a document never fetches it. See docs/api/js.md.
 */
import init, { DocumentStore, Document as Replica } from './wasm/pf2_automerge.js'
import { SyncError } from './errors.js'
import type { DocumentHost, DocumentLink, Status } from './link.js'

export type { DocumentLink } from './link.js'

/** Map keys and list indices from the document's root: `['todos', 0, 'title']`. */
export type Path = Array<string | number> | string

export interface DocumentsOptions {
  /** Where `pf2_automerge_bg.wasm` is served from, when a bundler moved it. */
  wasmUrl?: string | URL
  /** IndexedDB database name (default `pf2-docs:<tenant>:<client>`). */
  dbName?: string
  /** Bytes of increments after which the local store is compacted into one save (128 KiB). */
  compactBytes?: number
  /** Quiet time before local edits are written to IndexedDB and sent, in ms (default 0: the
   * next task; edits made in one task always share one write and one message). */
  batchMs?: number
}

/** The edits of one `change`: they become one Automerge change, or none if `fn` throws. */
export interface DocChange {
  /** Set a map key (or an existing list index) to a JSON value; objects and arrays nest. */
  put(path: Path, value: unknown): void
  /** Make `path` a collaborative text (concurrent edits to it merge character by character). */
  putText(path: Path, text: string): void
  /** In the text at `path`: delete `deleteCount` characters at `index` (UTF-16 code units, as
   * JS strings count), then insert `insert` there. */
  splice(path: Path, index: number, deleteCount: number, insert?: string): void
  /** Insert into the list at `path` before `index` (its length: append). */
  insert(path: Path, index: number, value: unknown): void
  /** Delete a map key or a list element. */
  delete(path: Path): void
  /** Read inside the change (sees the change's own edits). */
  get<T = unknown>(path?: Path): T | undefined
}

export interface DocChangeEvent {
  /** `true` for this tab's own `change`, `false` for changes that arrived from the server. */
  local: boolean
}

export interface DocErrorEvent {
  code: string
  message: string
}

/** Options of one document. */
export interface DocOptions {
  /**
   * The document's initial structure, e.g. `(d) => d.putText(['body'], '')`. It runs when the
   * replica has no history yet, as the document's *genesis* change: authored by a fixed actor
   * at time 0, so replicas that start the document offline make the identical change and their
   * edits land in the same objects (two separate `putText` at one key would be a conflict, and
   * Automerge would keep one text). It must be the same function everywhere, like a schema.
   */
  init?: (d: DocChange) => void
}

type DocEvents = {
  change: (e: DocChangeEvent) => void
  error: (e: DocErrorEvent) => void
}

let ready: Promise<unknown> | undefined

function loadWasm(url?: string | URL): Promise<unknown> {
  ready ??= init(url ? { module_or_path: url } : undefined)
  return ready
}

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('')
}

function toPath(p: Path | undefined): Array<string | number> {
  return p === undefined ? [] : typeof p === 'string' ? [p] : p
}

/** The documents of one client. Usually reached through `client.doc(id)`. */
export class Documents {
  private readonly open = new Map<string, Promise<DocHandle>>()
  private readonly handles = new Map<string, DocHandle>()
  private readonly detach: Array<() => void> = []
  private status: Status
  /** While degraded: the version of each document this replica has (what the poll watches
   * from), the documents to ask about, and the one batch request in flight. */
  private readonly versions = new Map<string, number>()
  private readonly dirty = new Set<string>()
  private httpBusy = false
  private httpAgain = false
  private retry?: ReturnType<typeof setTimeout>

  private constructor(
    private readonly store: DocumentStore,
    private readonly link: DocumentLink,
    private readonly options: DocumentsOptions,
  ) {
    this.status = link.status
    this.detach.push(
      link.onFrame((f) => {
        if (f?.type === 'doc_sync') this.handles.get(f.documentId)?.fromServer(f.message, f.more === true)
        if (f?.type === 'error' && typeof f.requestId === 'string') this.handles.get(f.requestId)?.refused(f.code, f.message)
      }),
      link.onStatus((s) => {
        const was = this.status
        this.status = s
        if (s === 'live' && was !== 'live') for (const h of this.handles.values()) h.reconnected()
        if (s !== 'live' && was === 'live') for (const h of this.handles.values()) h.linkLost()
        if (s === 'degraded' && was !== 'degraded') this.syncOverHttp(this.handles.keys())
        if (s !== 'degraded' && was === 'degraded') this.link.watchDocuments({})
      }),
      // The long-poll saw a document change: one batch request brings every such document.
      link.onDocuments((changed) => {
        const behind = changed.filter((d) => (this.versions.get(d.documentId) ?? 0) < d.version)
        // The poll waits for this sync (told by `watchDocuments`) before it asks again.
        if (behind.length) this.syncOverHttp(behind.map((d) => d.documentId))
        else this.link.watchDocuments(Object.fromEntries(this.versions))
      }),
    )
    if (this.status === 'degraded') this.syncOverHttp(this.handles.keys())
  }

  /**
   * @internal Sync over REST (the long-polling transport): rounds of one
   * `POST /api/documents/sync` carrying every open document with local changes to send (and
   * those in `ask`, which the poll said changed, with a message that brings their changes in
   * one round), until none has; then the poll watches them from the versions reached. Edits meanwhile are sent in the next round; the requests wait for the
   * polling budget, so fast typing makes fewer, larger messages.
   */
  async syncOverHttp(ask: Iterable<string> = []): Promise<void> {
    for (const id of ask) this.dirty.add(id)
    if (this.httpBusy) {
      this.httpAgain = true
      return
    }
    this.httpBusy = true
    clearTimeout(this.retry)
    let sent: DocHandle[] = []
    try {
      do {
        this.httpAgain = false
        for (let round = 0; round < 50 && this.status === 'degraded'; round++) {
          const docs: Array<{ documentId: string; message: string | null }> = []
          sent = []
          for (const [id, h] of this.handles) {
            const message = h.httpMessage(this.dirty.has(id))
            if (message === undefined) continue
            docs.push({ documentId: id, message })
            sent.push(h)
          }
          this.dirty.clear()
          if (!docs.length) break
          for (let i = 0; i < docs.length; i += 16) {
            const body = { clientId: this.link.clientId, documents: docs.slice(i, i + 16) }
            const answer = await this.link.rest('POST', '/api/documents/sync', body)
            for (const a of answer.documents as Array<{ documentId: string; messages: string[]; version: number; error?: { code: string; message: string } }>) {
              const h = this.handles.get(a.documentId)
              if (!h) continue
              if (a.error) h.httpRefused(a.error.code, a.error.message)
              else h.fromHttp(a.messages)
              this.versions.set(a.documentId, Math.max(this.versions.get(a.documentId) ?? 0, a.version ?? 0))
            }
          }
        }
        sent = []
        if (this.status === 'degraded') this.link.watchDocuments(Object.fromEntries(this.versions))
      } while (this.httpAgain && this.status === 'degraded')
    } catch (e: any) {
      // Unreachable or refused whole: those sessions start over from what both sides share,
      // and the exchange is tried again (the budget paces it).
      for (const h of sent) h.httpRefused(e?.code ?? 'NETWORK', String(e?.message ?? e))
      if (this.status === 'degraded') this.retry = setTimeout(() => this.syncOverHttp(), 5_000)
    } finally {
      this.httpBusy = false
    }
  }

  /** @internal */
  static async attach(client: DocumentHost, options: DocumentsOptions = {}): Promise<Documents> {
    // One tab at a time keeps a client's documents: two replicas writing one IndexedDB
    // record log would overwrite each other's increments.
    await Promise.all([client.documentLink().owned, loadWasm(options.wasmUrl)])
    const link = client.documentLink()
    const dbName = options.dbName ?? `pf2-docs:${link.tenantId}:${link.clientId}`
    const store = await DocumentStore.open(dbName, randomHex(16))
    return new Documents(store, link, options)
  }

  /** The document `id` (1–128 of `A-Za-z0-9-_.:`), from IndexedDB, syncing while live. */
  doc(id: string, options: DocOptions = {}): Promise<DocHandle> {
    let h = this.open.get(id)
    if (!h) {
      h = this.store.document(id, this.options.compactBytes ?? 128 * 1024).then((replica) => {
        const handle = new DocHandle(replica, this.link, this.options, () => this.status, () => this.forget(id), () => this.syncOverHttp())
        if (options.init) handle.genesis(options.init)
        this.handles.set(id, handle)
        if (this.status === 'live') handle.reconnected()
        if (this.status === 'degraded') this.syncOverHttp([id])
        return handle
      })
      h.catch(() => this.open.delete(id))
      this.open.set(id, h)
    }
    return h
  }

  private forget(id: string) {
    this.open.delete(id)
    this.handles.delete(id)
  }

  /** Close every document (after writing what is pending) and the database. */
  async close(): Promise<void> {
    for (const off of this.detach) off()
    clearTimeout(this.retry)
    this.link.watchDocuments({})
    await Promise.all([...this.handles.values()].map((h) => h.close()))
    this.store.close()
  }
}

/** One collaborative document. */
export class DocHandle {
  private readonly handlers = new Map<keyof DocEvents, Set<(e: any) => void>>()
  private scheduled = false
  private closed = false

  /** @internal use `client.doc(id)` */
  constructor(
    private readonly replica: Replica,
    private readonly link: DocumentLink,
    private readonly options: DocumentsOptions,
    private readonly status: () => Status,
    private readonly onClose: () => void,
    private readonly overHttp: () => void,
  ) {}

  get id(): string {
    return this.replica.id
  }

  /** The whole document as plain JSON (texts as strings). */
  value<T = Record<string, unknown>>(): T {
    return this.replica.get([]) as T
  }

  /** The value at `path`, or `undefined`. */
  get<T = unknown>(path: Path): T | undefined {
    return this.replica.get(toPath(path)) as T | undefined
  }

  /** The text at `path` ('' when there is none). */
  text(path: Path): string {
    const t = this.replica.get(toPath(path))
    return typeof t === 'string' ? t : ''
  }

  /** The document's heads: equal heads, equal documents. */
  heads(): string[] {
    return this.replica.heads()
  }

  /** The whole document as one Automerge save (`Automerge.load` from @automerge/automerge reads it). */
  save(): Uint8Array {
    return this.replica.save()
  }

  /**
   * Edit: everything `fn` does becomes one change, applied at once, written to IndexedDB and
   * sent to the server shortly after. If `fn` throws, none of it happens and the error is
   * rethrown.
   */
  change(fn: (d: DocChange) => void): void {
    if (this.closed) throw new SyncError('CLOSED', `document ${this.id} is closed`)
    const r = this.replica
    try {
      fn(this.editor())
    } catch (e) {
      r.rollback()
      throw e
    }
    if (r.commit(Date.now())) {
      this.emit('change', { local: true })
      this.schedule()
    }
  }

  on<K extends keyof DocEvents>(kind: K, handler: DocEvents[K]): () => void {
    let set = this.handlers.get(kind)
    if (!set) this.handlers.set(kind, (set = new Set()))
    set.add(handler)
    return () => set!.delete(handler)
  }

  /** Resolves once every edit so far (and every change received) is in IndexedDB. */
  flushed(): Promise<void> {
    return this.replica.flushed()
  }

  /** Write what is pending, stop syncing, and free the replica. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.flushed()
    this.closed = true
    this.link.send({ type: 'doc_close', documentId: this.id })
    this.onClose()
    this.replica.free()
  }

  /** @internal the genesis change: `init` as the fixed actor, once per document history */
  genesis(init: (d: DocChange) => void) {
    if (!this.replica.beginGenesis()) return
    let ok = false
    try {
      init(this.editor())
      ok = true
    } finally {
      this.replica.endGenesis(ok)
    }
    this.schedule()
  }

  private editor(): DocChange {
    const r = this.replica
    return {
      put: (p, v) => r.put(toPath(p), v),
      putText: (p, t) => r.putText(toPath(p), t),
      splice: (p, i, del, ins = '') => r.splice(toPath(p), i, del, ins),
      insert: (p, i, v) => r.insert(toPath(p), i, v),
      delete: (p) => r.delete(toPath(p)),
      get: <T>(p?: Path) => r.get(toPath(p)) as T | undefined,
    }
  }

  private emit<K extends keyof DocEvents>(kind: K, e: Parameters<DocEvents[K]>[0]) {
    for (const h of this.handlers.get(kind) ?? []) {
      try {
        h(e)
      } catch (err) {
        queueMicrotask(() => {
          throw err
        })
      }
    }
  }

  /** Coalesce: the edits of one task share one IndexedDB write and one sync message. */
  private schedule() {
    if (this.scheduled) return
    this.scheduled = true
    setTimeout(() => {
      this.scheduled = false
      if (this.closed) return
      this.replica.flushed().catch((e) => this.emit('error', { code: 'STORAGE', message: String(e?.message ?? e) }))
      this.sendSync()
    }, this.options.batchMs ?? 0)
  }

  /**
   * Within the connection's message budget: the sync message is built when the budget allows,
   * from every edit made until then — typing faster than the budget makes fewer, larger
   * messages, never a closed socket.
   */
  private sendSync() {
    if (this.closed) return
    if (this.status() === 'degraded') return this.overHttp()
    const wanted = this.link.pacedSync(this.id, () => (this.closed ? [] : (this.replica.syncFrames() as unknown[])))
    // Not connected after all: start over from what both sides share when live again.
    if (!wanted) this.replica.disconnected()
  }

  /** @internal the sync message for a REST round (`ask`: bring what the server has) */
  httpMessage(ask: boolean): string | undefined {
    return this.closed ? undefined : this.replica.httpMessage(ask)
  }

  /** @internal the server's answers of a REST exchange */
  fromHttp(messages: string[]) {
    if (this.closed) return
    let changed = false
    try {
      for (const m of messages) changed = this.replica.receive(m, false) || changed
    } catch (e: any) {
      this.replica.disconnected()
      this.emit('error', { code: 'BAD_SYNC_MESSAGE', message: String(e?.message ?? e) })
      return
    }
    if (changed) {
      this.emit('change', { local: false })
      this.replica.flushed().catch((e) => this.emit('error', { code: 'STORAGE', message: String(e?.message ?? e) }))
    }
  }

  /** @internal a REST exchange failed: the next starts over from what both sides share */
  httpRefused(code: string, message: string) {
    if (this.closed) return
    this.replica.disconnected()
    this.emit('error', { code, message })
  }

  /** @internal */
  fromServer(message: string, more: boolean) {
    if (this.closed) return
    let changed: boolean
    try {
      changed = this.replica.receive(message, more)
    } catch (e: any) {
      this.emit('error', { code: 'BAD_SYNC_MESSAGE', message: String(e?.message ?? e) })
      return
    }
    if (more) return
    if (changed) {
      this.emit('change', { local: false })
      this.replica.flushed().catch((e) => this.emit('error', { code: 'STORAGE', message: String(e?.message ?? e) }))
    }
    this.sendSync()
  }

  /** @internal the server refused a message for this document (e.g. PAYLOAD_TOO_LARGE). */
  refused(code: string, message: string) {
    this.emit('error', { code, message })
  }

  /** @internal the client is live again: a new session from what both sides share. */
  reconnected() {
    if (this.closed) return
    this.replica.disconnected()
    this.sendSync()
  }

  /** @internal */
  linkLost() {
    if (!this.closed) this.replica.disconnected()
  }
}

/** Attach documents to a client explicitly (what `client.doc` does on first use). */
export function openDocuments(client: DocumentHost, options?: DocumentsOptions): Promise<Documents> {
  return Documents.attach(client, options)
}
