// The package's one error class, shared by both entry points (`@pf2/sync`, `@pf2/sync/automerge`).

export class SyncError extends Error {
  constructor(readonly code: string, message: string, readonly status?: number) {
    super(message)
    this.name = 'SyncError'
  }
}
