// examples/react-todo (a Vite + React build, `make example-build`) on its own origin against a
// server set up as `make run` sets it up (demo tenant, demo/rules.toml), in Chromium: two users
// converge after one of them edited offline, presence and the collaborative note included; the
// same app served from an origin the server does not list is refused.
import assert from 'node:assert/strict'
import { createReadStream, existsSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { extname, join, normalize } from 'node:path'
import { after, before, test } from 'node:test'
import { freePort, launchBrowser, root, startServer, until } from './harness.mjs'

const dist = join(root, 'examples', 'react-todo', 'dist')
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' }

/** A static file server for the built app: an origin of its own. */
function serveStatic(port) {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '')
    let file = join(dist, path)
    if (!existsSync(file) || statSync(file).isDirectory()) file = join(dist, 'index.html')
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' })
    createReadStream(file).pipe(res)
  })
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)))
}

const env = {}
before(async () => {
  assert.ok(existsSync(join(dist, 'index.html')), `${dist} is missing: run make example-build (make test does)`)
  const [appPort, otherPort] = [await freePort(), await freePort()]
  env.app = `http://127.0.0.1:${appPort}`
  env.other = `http://127.0.0.1:${otherPort}`
  env.statics = [await serveStatic(appPort), await serveStatic(otherPort)]
  env.server = await startServer({
    demo: true,
    env: {
      PF2_CORS_ALLOWED_ORIGINS: env.app,
      PF2_SYNC_RULES: join(root, 'demo', 'rules.toml'),
      PF2_STRATEGIES: 'todo=field-merge-manual',
    },
  })
  env.browser = await launchBrowser()
})
after(async () => {
  await env.browser?.close()
  await env.server?.stop()
  for (const s of env.statics ?? []) s.close()
})

async function open(user, origin = env.app) {
  const context = await env.browser.newContext()
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error(`[${user} page error]`, e))
  await page.goto(`${origin}/?user=${user}&server=${encodeURIComponent(env.server.url)}`)
  return { context, page }
}

const text = (page, sel) => page.evaluate((sel) => document.querySelector(sel)?.textContent ?? null, sel)
const titles = (page, list) => page.evaluate((list) => [...document.querySelectorAll(`#${list} li`)].map((li) => li.dataset.title), list)
const note = (page) => page.evaluate(() => document.querySelector('#note')?.value ?? null)

test('two users of the React app on its own origin converge after offline edits', async () => {
  const alice = await open('alice')
  const bob = await open('bob')
  for (const { page } of [alice, bob]) await page.waitForSelector('#status[data-status="live"]', { timeout: 60_000 })
  await until('each sees the other present', async () => ((await text(alice.page, '#people')) === 'here too: bob' && (await text(bob.page, '#people')) === 'here too: alice') || [await text(alice.page, '#people'), await text(bob.page, '#people')])

  await alice.page.fill('#new-title', 'milk')
  await alice.page.click('#add')
  await alice.page.fill('#new-title', 'eggs')
  await alice.page.click('#add')
  await until('bob sees the todos', async () => JSON.stringify(await titles(bob.page, 'open')) === '["milk","eggs"]' || (await titles(bob.page, 'open')))
  await alice.page.fill('#note', 'Shopping.')
  await until('bob sees the note', async () => (await note(bob.page)) === 'Shopping.' || (await note(bob.page)))

  // Bob goes offline and edits: a todo renamed, one added, the note extended.
  await bob.context.setOffline(true)
  await bob.page.waitForSelector('#status[data-status="offline"]')
  const milk = bob.page.locator('#open li[data-title="milk"] .title')
  await milk.fill('milk (2 l)')
  await milk.press('Enter')
  await bob.page.fill('#new-title', 'bread')
  await bob.page.click('#add')
  await bob.page.fill('#note', 'Shopping. Bob: before noon.')
  await until('bob has queued his edits', async () => Number(await bob.page.getAttribute('#status', 'data-pending')) >= 2 || (await bob.page.getAttribute('#status', 'data-pending')))
  // Meanwhile alice marks eggs done and writes in the note.
  await alice.page.locator('#open li[data-title="eggs"] input[type="checkbox"]').click() // the row moves to Done
  await alice.page.fill('#note', 'Alice: Shopping.')

  await bob.context.setOffline(false)
  await until('both converge', async () => {
    const state = async (p) => JSON.stringify({ open: await titles(p, 'open'), done: await titles(p, 'done'), note: await note(p) })
    const [a, b] = [await state(alice.page), await state(bob.page)]
    const s = JSON.parse(a)
    return (a === b && JSON.stringify(s.open) === '["milk (2 l)","bread"]' && JSON.stringify(s.done) === '["eggs"]' && s.note.includes('Alice:') && s.note.includes('Bob: before noon.')) || [a, b]
  })
  assert.equal(await bob.page.getAttribute('#status', 'data-pending'), '0')
  await alice.context.close()
  await bob.context.close()
})

test('the same app from an origin the server does not list is refused', async () => {
  const res = await fetch(`${env.server.url}/config.js`, { headers: { origin: env.other } })
  assert.equal(res.headers.get('access-control-allow-origin'), null, 'no CORS header for an unlisted origin')
  const ok = await fetch(`${env.server.url}/config.js`, { headers: { origin: env.app } })
  assert.equal(ok.headers.get('access-control-allow-origin'), env.app)

  const stranger = await open('alice', env.other)
  await stranger.page.waitForSelector('#error')
  assert.match(await text(stranger.page, '#error'), /Cannot reach the sync server/)
  // Neither REST nor the WebSocket lets this origin in, token or not.
  const refused = await stranger.page.evaluate(async ({ url, token }) => {
    const rest = await fetch(`${url}/api/reconciliation/conflicts`, { headers: { authorization: `Bearer ${token}` } }).then(
      (r) => `answered ${r.status}`,
      (e) => `refused: ${e.name}`,
    )
    const ws = await new Promise((resolve) => {
      const s = new WebSocket(`${url.replace("http", "ws")}/v1/ws`)
      s.onopen = () => resolve('opened')
      s.onclose = (e) => resolve(`closed ${e.code}`)
    })
    return { rest, ws }
  }, { url: env.server.url, token: env.server.token('demo', 'alice') })
  assert.deepEqual(refused, { rest: 'refused: TypeError', ws: 'closed 1006' })
  await stranger.context.close()
})
