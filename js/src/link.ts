// What the documents module (`@pf2/sync/automerge`) needs of the base client, so that neither
// entry point imports the other: both import this file (types only).

export type Status = 'offline' | 'connecting' | 'syncing' | 'live' | 'degraded'

/** What a documents module needs of the client (internal to the package). */
export interface DocumentLink {
  tenantId: string
  clientId: string
  /** Resolves once this tab owns the connection (documents are kept by that tab only). */
  owned: Promise<void>
  status: Status
  send(frame: unknown): boolean
  /**
   * Document `id` has something to say: `build` is called when the connection's message budget
   * allows (at once if it does) and returns the frames to send then. Wanting again before that
   * adds nothing. `false` when no WebSocket is open.
   */
  pacedSync(id: string, build: () => unknown[]): boolean
  rest(method: string, path: string, body?: unknown): Promise<any>
  /**
   * While degraded, the client's long-poll also watches these documents (`{id: version}`, the
   * version each replica has) and reports `onDocuments` when one changed.
   */
  watchDocuments(versions: Record<string, number>): void
  onDocuments(h: (changed: Array<{ documentId: string; version: number }>) => void): () => void
  onFrame(h: (frame: any) => void): () => void
  onStatus(h: (status: Status) => void): () => void
}


/** A client that can lend its connection to documents (the base `SyncClient`). */
export interface DocumentHost {
  documentLink(): DocumentLink
}
