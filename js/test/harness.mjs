// Test harness: a real sync-server (embedded SQLite in a temp dir) serving the packed npm
// tarball and a test page, and Debian's Chromium driven by playwright-core.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before } from 'node:test'
import { chromium } from 'playwright-core'
import { stageDemo, stagePackage } from '../../demo/stage.mjs'

const here = dirname(fileURLToPath(import.meta.url))
export const jsDir = join(here, '..')
export const root = join(jsDir, '..')
const SECRET = 'browser-test-secret-browser-test-secret-01'

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

const PAGE = `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>pf2 test</title>
<script type="module">
  import * as pf2 from '/pkg/dist/index.js'
  window.pf2 = pf2
  await pf2.preload()
  window.pf2Ready = true
</script>`

/** A sync-server on a free port, on SQLite in a temp dir, serving the test page (or, with
 * `demo`, the demo app for tenant `demo`). */
export async function startServer({ env = {}, demo = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'pf2-browser-'))
  const www = join(dir, 'www')
  mkdirSync(www, { recursive: true })
  const port = await freePort()
  const bin = process.env.PF2_SERVER_BIN ?? join(root, 'target', 'debug', 'sync-server')
  const serverEnv = {
    ...process.env,
    PF2_DATABASE_URL: `sqlite://${join(dir, 'pf2.db')}`,
    PF2_LISTEN: `127.0.0.1:${port}`,
    PF2_JWT_SECRET: SECRET,
    PF2_STATIC_DIR: www,
    PF2_LOG: 'warn',
    ...env,
  }
  if (demo) {
    stageDemo(www, bin, 'demo', serverEnv)
  } else {
    stagePackage(www)
    writeFileSync(join(www, 'index.html'), PAGE)
  }
  const url = `http://127.0.0.1:${port}`
  let child
  const spawnServer = async () => {
    child = spawn(bin, ['serve'], { env: serverEnv, stdio: ['ignore', 'inherit', 'inherit'] })
    for (let i = 0; ; i++) {
      try {
        const r = await fetch(`${url}/health`)
        if (r.ok) break
      } catch {}
      if (child.exitCode !== null) throw new Error(`sync-server exited with ${child.exitCode}`)
      if (i > 400) throw new Error('sync-server did not become healthy')
      await new Promise((r) => setTimeout(r, 25))
    }
  }
  const kill = async (signal) => {
    child.kill(signal)
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', r)))
  }
  await spawnServer()
  /** A token; `claims` (`{projects: ['p1']}`) and `roles` for sync rules' grants. */
  const token = (tenant, user, ttl = 3600, { claims = {}, roles = [] } = {}) => {
    const extra = Object.entries(claims).flatMap(([k, v]) => ['--claim', `${k}=${JSON.stringify(v)}`])
    const roleArgs = roles.flatMap((r) => ['--role', r])
    return execFileSync(bin, ['token', '--tenant', tenant, '--user', user, '--ttl', String(ttl), ...extra, ...roleArgs], { env: serverEnv })
      .toString()
      .trim()
  }
  const api = async (method, path, tok, body) => {
    const r = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${tok}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    })
    const text = await r.text()
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`)
    return JSON.parse(text)
  }
  /** Every event of the tenant's log, paging to the end. */
  const events = async (tok) => {
    const all = []
    for (let last = 0; ; ) {
      const page = await api('GET', `/api/events/poll?lastEventId=${last}&limit=1000`, tok)
      all.push(...page.events)
      if (!page.hasMore) return all
      last = page.nextEventId
    }
  }
  const stop = async () => {
    await kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
  /** Kill the server (SIGKILL: no goodbye to its sockets) and start it again on the same port
   * and database. */
  const restart = async () => {
    await kill('SIGKILL')
    await spawnServer()
  }
  return { url, www, token, api, events, stop, restart }
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  })
}

/** A page of the test site with the package loaded as `window.pf2`. */
export async function openPage(context, url) {
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error('[page error]', e))
  page.on('console', (m) => m.type() === 'error' && console.error('[page console]', m.text()))
  await page.goto(`${url}/index.html`)
  await page.waitForFunction(() => window.pf2Ready === true)
  return page
}

/** Poll `check` (a condition, not a delay) until it returns `true` or `ms` pass; on timeout
 * the error shows what `check` last returned. */
export async function until(what, check, ms = 60_000) {
  const deadline = Date.now() + ms
  for (;;) {
    const last = await check()
    if (last === true) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)?.slice(0, 500)}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Register a suite's server and browser (started before its tests, stopped after):
 * `const env = useServerAndBrowser(opts)`, then `env.server`, `env.browser` inside tests. */
export function useServerAndBrowser(opts = {}) {
  const env = { server: undefined, browser: undefined }
  before(async () => {
    env.server = await startServer(opts)
    env.browser = await launchBrowser()
  })
  after(async () => {
    await env.browser?.close()
    await env.server?.stop()
  })
  return env
}
