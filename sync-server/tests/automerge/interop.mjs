// A stock @automerge/automerge 3.5 (npm) against the PF-2 Sync server, driven by
// sync-server/tests/documents.rs: it loads the server's bytes (an `automerge` entity's snapshot
// and a document hub's snapshot) and produces a change the server accepts as a CRDT operation.
// Usage: node interop.mjs <base-url> <token> <tenant>; prints one JSON line.
import * as A from '@automerge/automerge'

const [base, token, tenant] = process.argv.slice(2)
const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
const get = async (path) => {
  const r = await fetch(base + path, { headers })
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`)
  return r.json()
}

// Server → JS: the entity's document bytes load in stock Automerge.
const snap = await get('/api/reconciliation/snapshot/doc/notes')
let doc = A.load(Buffer.from(snap.data.crdt, 'base64'))
const entityText = doc.text
// JS → server: a change made by stock Automerge, sent as one CRDT operation.
doc = A.change(doc, (d) => A.splice(d, ['text'], 0, 0, 'js+'))
const change = A.getLastLocalChange(doc)
const op = {
  operationId: `js-1-${tenant}`, clientId: 'js', clientSeq: 1, tenantId: tenant,
  entityType: 'doc', entityId: 'notes', operationType: 'CRDT',
  payload: Buffer.from(change).toString('base64'),
  timestamp: new Date().toISOString(), vectorClock: { js: 1 },
}
const r = await fetch(`${base}/api/reconciliation/reconcile`, {
  method: 'POST', headers,
  body: JSON.stringify({ requestId: `js-${tenant}`, clientId: 'js', tenantId: tenant, operations: [op] }),
})
const reconciled = await r.json()
// The document hub's save loads too.
const hub = await get('/api/documents/hub/snapshot')
const hubDoc = A.load(Buffer.from(hub.save, 'base64'))
console.log(JSON.stringify({
  entityText, status: reconciled.resolvedOperations?.[0]?.status, hubText: hubDoc.text,
}))
