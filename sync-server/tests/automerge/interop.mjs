// A stock @automerge/automerge 3.5 (npm) against the PF-2 Sync server, driven by
// sync-server/tests/documents.rs: it loads the server's bytes (an `automerge` entity's snapshot
// and a document hub's snapshot) and produces a change the server accepts as a CRDT operation;
// then it joins the hub document over /v1/ws with its own sync messages (`doc_sync`), edits it,
// and syncs the edit back.
// Usage: node --experimental-websocket interop.mjs <base-url> <token> <tenant>; prints one JSON line.
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
// Stock sync messages over doc_sync: join "hub" from nothing, append, sync until quiet (a ping
// orders the server's answers: every doc_sync before the pong belongs to this round).
const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/ws?token=${token}&clientId=stock-js`)
await new Promise((r, j) => ((ws.onopen = r), (ws.onerror = j)))
let live = A.init()
let state = A.initSyncState()
let waiting
ws.onmessage = (e) => {
  const f = JSON.parse(e.data)
  if (f.type === 'doc_sync' && !f.more) {
    ;[live, state] = A.receiveSyncMessage(live, state, new Uint8Array(Buffer.from(f.message, 'base64')))
    waiting.received = true
  }
  if (f.type === 'error') waiting.reject(new Error(`${f.code}: ${f.message}`))
  if (f.type === 'pong' && f.nonce === waiting.nonce) waiting.resolve()
}
const round = (nonce) =>
  new Promise((resolve, reject) => {
    waiting = { nonce, resolve, reject, received: false }
    let m
    ;[state, m] = A.generateSyncMessage(live, state)
    waiting.sent = !!m
    if (m) ws.send(JSON.stringify({ v: 1, type: 'doc_sync', documentId: 'hub', message: Buffer.from(m).toString('base64') }))
    ws.send(JSON.stringify({ v: 1, type: 'ping', nonce }))
  }).then(() => waiting.sent || waiting.received)
let nonce = 0
while (await round(++nonce));
const joinedText = live.text
live = A.change(live, (d) => A.splice(d, ['text'], d.text.length, 0, ' + stock js'))
while (await round(++nonce));
ws.close()
console.log(JSON.stringify({
  entityText, status: reconciled.resolvedOperations?.[0]?.status, hubText: hubDoc.text, joinedText,
}))
