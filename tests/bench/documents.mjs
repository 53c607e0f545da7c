// Documents benchmark: one synthetic editing trace (OPS single-character edits, 70 % inserts,
// 30 % deletes at random places; runs of 1,000 by two clients taking turns, one change per 10
// edits), the same stock @automerge/automerge 3.5 clients in three setups, one run:
//   in-process — the two clients and a relay replica exchange sync messages by function call;
//   PF-2       — through sync-server's /v1/ws (`doc_sync` frames carrying the same messages);
//   automerge-repo 2.5 — through its Node sync server (WebSocket + filesystem storage).
// Per setup: time to converge (after each run's edits, until the other client has the same
// heads; summed), server CPU (from /proc), bytes the server stores. Prints markdown rows.
// Usage: node tests/bench/documents.mjs SYNC_SERVER_BIN [OPS]   (make bench-documents)
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, statSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import * as A from '@automerge/automerge'
import { Repo } from '@automerge/automerge-repo'
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket'

const here = dirname(fileURLToPath(import.meta.url))
const [bin, opsArg] = process.argv.slice(2)
const OPS = Number(opsArg ?? 100_000)
const RUN = 1_000
const TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString())
const PART = 32 * 1024

/** The trace: per run, its author and edits `[at, deleteCount, insert]`, plus the final text. */
function trace() {
  let x = 7
  const rnd = (n) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n)
  const model = []
  const runs = []
  for (let r = 0; r < OPS / RUN; r++) {
    const edits = []
    for (let i = 0; i < RUN; i++) {
      if (model.length > 0 && rnd(10) < 3) {
        const at = rnd(model.length)
        model.splice(at, 1)
        edits.push([at, 1, ''])
      } else {
        const at = rnd(model.length + 1)
        const ch = String.fromCharCode(97 + rnd(26))
        model.splice(at, 0, ch)
        edits.push([at, 0, ch])
      }
    }
    runs.push(edits)
  }
  return { runs, text: model.join('') }
}

const heads = (doc) => A.getHeads(doc).slice().sort().join()
const cpu = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) / TICKS
}
const du = (dir) =>
  readdirSync(dir, { recursive: true }).reduce((n, f) => {
    const s = statSync(join(dir, f))
    return s.isFile() ? n + s.size : n
  }, 0)

/** Apply one run's edits to a client's document, one change per 10 edits. */
function edit(doc, edits) {
  for (let i = 0; i < edits.length; i += 10) {
    doc = A.change(doc, (d) => {
      for (const [at, del, ins] of edits.slice(i, i + 10)) A.splice(d, ['text'], at, del, ins)
    })
  }
  return doc
}

/** Replay the trace: `setup` gives two clients with `doc` get/set, `push(i)` (start syncing
 * client i's edits) and `converged()` (resolves when both have the same heads). */
async function replay(t, clients) {
  let converge = 0
  let editing = 0
  const cpu0 = process.cpuUsage()
  for (let r = 0; r < t.runs.length; r++) {
    const who = r % 2
    const e0 = performance.now()
    if (clients[who].edit) clients[who].edit(t.runs[r])
    else clients[who].doc = edit(clients[who].doc, t.runs[r])
    const e1 = performance.now()
    editing += e1 - e0
    await clients.sync(who)
    converge += performance.now() - e1
  }
  const used = process.cpuUsage(cpu0)
  for (const c of [clients[0], clients[1]]) {
    if (c.doc.text !== t.text) throw new Error('a client does not hold the trace text')
  }
  return { converge, editing, clientCpu: (used.user + used.system) / 1e6 }
}

// ---- in-process: clients and a relay replica, sync messages by function call ----------------
async function inProcess(t) {
  let relay = A.init()
  const c = [0, 1].map((i) => ({ doc: A.init({ actor: `0${i + 1}`.padEnd(32, '0') }), up: A.initSyncState(), down: A.initSyncState() }))
  const exchange = (client) => {
    for (let quiet = false; !quiet; ) {
      quiet = true
      let m
      ;[client.up, m] = A.generateSyncMessage(client.doc, client.up)
      if (m) {
        quiet = false
        ;[relay, client.down] = A.receiveSyncMessage(relay, client.down, m)
      }
      ;[client.down, m] = A.generateSyncMessage(relay, client.down)
      if (m) {
        quiet = false
        ;[client.doc, client.up] = A.receiveSyncMessage(client.doc, client.up, m)
      }
    }
  }
  c[0].doc = A.change(c[0].doc, (d) => (d.text = ''))
  exchange(c[0])
  exchange(c[1])
  const clients = { 0: c[0], 1: c[1], sync: async (who) => (exchange(c[who]), exchange(c[1 - who])) }
  const r = await replay(t, clients)
  return { ...r, cpu: undefined, stored: A.save(relay).length }
}

// ---- PF-2: /v1/ws doc_sync ---------------------------------------------------------------------
async function waitPort(url) {
  for (let i = 0; i < 400; i++) {
    try {
      if ((await fetch(url)).ok) return
    } catch {}
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`${url} never answered`)
}

class Pf2Client {
  constructor(doc) {
    this.doc = doc
    this.state = A.initSyncState()
    this.parts = []
    this.onChange = () => {}
  }
  async connect(url, token, clientId) {
    this.ws = new WebSocket(`${url.replace('http', 'ws')}/v1/ws?token=${token}&clientId=${clientId}`)
    this.ws.on('message', (data) => this.frame(JSON.parse(data.toString())))
    await new Promise((r, j) => (this.ws.once('open', r), this.ws.once('error', j)))
  }
  frame(f) {
    if (f.type === 'error') throw new Error(`${f.code}: ${f.message}`)
    if (f.type !== 'doc_sync') return
    this.parts.push(Buffer.from(f.message, 'base64'))
    if (f.more) return
    const m = new Uint8Array(Buffer.concat(this.parts))
    this.parts = []
    ;[this.doc, this.state] = A.receiveSyncMessage(this.doc, this.state, m)
    this.send()
    this.onChange()
  }
  send() {
    let m
    ;[this.state, m] = A.generateSyncMessage(this.doc, this.state)
    if (!m) return
    for (let i = 0; i < Math.max(m.length, 1); i += PART) {
      const part = Buffer.from(m.subarray(i, i + PART)).toString('base64')
      this.ws.send(JSON.stringify({ v: 1, type: 'doc_sync', documentId: 'trace', message: part, more: i + PART < m.length }))
    }
  }
}

/** Resolves once `b` has `a`'s heads (checked whenever `b` changes). */
function caughtUp(a, b) {
  return new Promise((resolve) => {
    const check = () => heads(a.doc) === heads(b.doc) && (b.onChange = () => {}, resolve())
    b.onChange = check
    check()
  })
}

async function pf2(t) {
  const dir = mkdtempSync(join(tmpdir(), 'pf2-doc-bench-'))
  const port = 3300 + Math.floor(Math.random() * 500)
  const env = {
    ...process.env,
    PF2_DATABASE_URL: `sqlite://${dir}/pf2.db`,
    PF2_LISTEN: `127.0.0.1:${port}`,
    PF2_JWT_SECRET: 'bench-secret-bench-secret-bench-secret-01',
    PF2_LOG: 'warn',
  }
  const server = spawn(bin, ['serve'], { env, stdio: ['ignore', 'inherit', 'inherit'] })
  const url = `http://127.0.0.1:${port}`
  await waitPort(`${url}/health`)
  const token = execFileSync(bin, ['token', '--tenant', 'bench', '--user', 'writer', '--ttl', '3600'], { env }).toString().trim()
  const c = [new Pf2Client(A.init({ actor: '01'.padEnd(32, '0') })), new Pf2Client(A.init({ actor: '02'.padEnd(32, '0') }))]
  await c[0].connect(url, token, 'alice')
  await c[1].connect(url, token, 'bob')
  c[0].doc = A.change(c[0].doc, (d) => (d.text = ''))
  c[0].send()
  c[1].send() // opens the document on Bob's socket
  await caughtUp(c[0], c[1])
  const cpu0 = cpu(server.pid)
  const clients = {
    0: c[0],
    1: c[1],
    sync: async (who) => {
      const done = caughtUp(c[who], c[1 - who])
      c[who].send()
      await done
    },
  }
  const r = await replay(t, clients)
  const used = cpu(server.pid) - cpu0
  const snap = await (await fetch(`${url}/api/documents/trace/snapshot`, { headers: { authorization: `Bearer ${token}` } })).json()
  if (snap.heads.slice().sort().join() !== heads(c[0].doc)) throw new Error('the server does not hold the trace')
  for (const x of c) x.ws.close()
  server.kill('SIGTERM')
  await new Promise((r) => server.once('exit', r))
  rmSync(dir, { recursive: true, force: true })
  return { ...r, cpu: used, stored: snap.storedBytes }
}

// ---- automerge-repo 2.5: its Node sync server ------------------------------------------------
async function automergeRepo(t) {
  const dir = mkdtempSync(join(tmpdir(), 'am-repo-bench-'))
  const port = 3900 + Math.floor(Math.random() * 500)
  const server = spawn(process.execPath, [join(here, 'automerge-repo-server.mjs'), String(port), dir], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise((r) => server.stdout.once('data', r))
  const repos = [0, 1].map(() => new Repo({ network: [new WebSocketClientAdapter(`ws://127.0.0.1:${port}`)] }))
  const handle = repos[0].create({ text: '' })
  const other = await repos[1].find(handle.url)
  const hs = [handle, other]
  const wrap = (h) => ({
    get doc() {
      return h.doc()
    },
    // The handle's own API: one `change` per 10 edits, as the other setups.
    edit(edits) {
      for (let i = 0; i < edits.length; i += 10) {
        h.change((d) => {
          for (const [at, del, ins] of edits.slice(i, i + 10)) A.splice(d, ['text'], at, del, ins)
        })
      }
    },
  })
  const c = [wrap(hs[0]), wrap(hs[1])]
  const caught = (a, b) =>
    new Promise((resolve) => {
      const check = () => heads(hs[a].doc()) === heads(hs[b].doc()) && (hs[b].off('change', check), resolve())
      hs[b].on('change', check)
      check()
    })
  await caught(0, 1)
  const cpu0 = cpu(server.pid)
  const clients = { 0: c[0], 1: c[1], sync: (who) => caught(who, 1 - who) }
  const r = await replay(t, clients)
  const used = cpu(server.pid) - cpu0
  for (const repo of repos) await repo.shutdown()
  server.kill('SIGTERM')
  await new Promise((r) => server.once('exit', r))
  const stored = du(dir)
  rmSync(dir, { recursive: true, force: true })
  return { ...r, cpu: used, stored }
}

const t = trace()
await inProcess({ runs: t.runs.slice(0, 10), text: undefined }).catch(() => {}) // JIT warm-up, not measured
const setups = [
  ['in-process automerge (relay replica, no network)', inProcess],
  ['PF-2 sync-server /v1/ws (SQLite)', pf2],
  ['automerge-repo 2.5 Node sync server (nodefs)', automergeRepo],
]
const rows = []
for (const [label, run] of setups) {
  console.error(`… ${label}`)
  rows.push([label, await run(t)])
}
const s = (ms) => (ms / 1000).toFixed(2)
console.log(`Documents: ${OPS.toLocaleString('en')} edits in runs of ${RUN.toLocaleString('en')}, two clients taking turns; final text ${t.text.length.toLocaleString('en')} characters`)
console.log()
console.log('| setup | time to converge s | clients editing s | clients CPU s (all) | server CPU s | stored bytes |')
console.log('| --- | --- | --- | --- | --- | --- |')
for (const [label, r] of rows) {
  const server = r.cpu === undefined ? '— (in the clients\' process)' : r.cpu.toFixed(2)
  console.log(`| ${label} | ${s(r.converge)} | ${s(r.editing)} | ${r.clientCpu.toFixed(2)} | ${server} | ${r.stored.toLocaleString('en')} |`)
}
const [inproc, ours, repo] = rows.map((r) => r[1])
console.log()
console.log(`PF-2 / in-process, time to converge: ${(ours.converge / inproc.converge).toFixed(2)}×`)
console.log(`PF-2 / automerge-repo, time to converge: ${(ours.converge / repo.converge).toFixed(2)}×; server CPU: ${(ours.cpu / repo.cpu).toFixed(2)}×; stored bytes: ${(ours.stored / repo.stored).toFixed(2)}×`)
