// The demo app (`make run`) in two browsers: collaboration, presence, the offline switch, the
// shared notes (a collaborative text); and the
// screenshot README shows (written to $PF2_DEMO_SCREENSHOT, default target/demo.png).
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { test } from 'node:test'
import { root, useServerAndBrowser } from './harness.mjs'

// As `make run` starts it: the demo's strategy and sync rules.
const env = useServerAndBrowser({
  demo: true,
  env: { PF2_STRATEGIES: 'todo=field-merge-manual', PF2_SYNC_RULES: join(root, 'demo', 'rules.toml') },
})

async function open(user) {
  const context = await env.browser.newContext({ viewport: { width: 760, height: 560 } })
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error(`[${user} page error]`, e))
  await page.goto(`${env.server.url}/?user=${user}`)
  await page.waitForSelector('#status[data-status="live"]')
  return { context, page }
}

const titles = (page) => page.$$eval('#todos li span', (s) => s.map((e) => e.textContent))

test('the demo: two users collaborate, see each other, and sync after working offline', async () => {
  const alice = await open('alice')
  const bob = await open('bob')
  for (const t of ['Buy milk', 'Book the venue', 'Send invitations']) {
    await alice.page.fill('#title', t)
    await alice.page.click('#add button')
  }
  await bob.page.waitForFunction(() => document.querySelectorAll('#todos li').length === 3)
  assert.deepEqual(await titles(bob.page), ['Buy milk', 'Book the venue', 'Send invitations'])
  // Presence: each sees two avatars.
  await alice.page.waitForFunction(() => document.querySelectorAll('#people .avatar').length === 2)

  // Bob works offline: the badge says so, his change waits, then syncs.
  await bob.page.check('#offline')
  await bob.page.waitForSelector('#status[data-status="offline"]')
  await bob.page.check('#todos li:nth-child(1) input[type=checkbox]')
  await bob.page.waitForFunction(() => /1 change waiting/.test(document.querySelector('#pending').textContent))
  assert.equal(await alice.page.isChecked('#todos li:nth-child(1) input[type=checkbox]'), false)
  await bob.page.uncheck('#offline')
  await bob.page.waitForSelector('#status[data-status="live"]')
  await alice.page.waitForFunction(() => document.querySelector('#todos li:nth-child(1)').classList.contains('done'))

  // A private todo stays alice's: bob's page gets the shared todo added after it, and not it.
  await alice.page.fill('#private-title', 'Call the florist')
  await alice.page.click('#add-private button')
  await alice.page.waitForFunction(() => document.querySelectorAll('#private li').length === 1)
  await alice.page.fill('#title', 'Print the menus')
  await alice.page.click('#add button')
  await bob.page.waitForFunction(() => document.querySelectorAll('#todos li').length === 4)
  assert.equal(await bob.page.$$eval('#private li', (l) => l.length), 0)
  assert.ok(!(await bob.page.evaluate(() => JSON.stringify(client.query('private')))).includes('florist'))

  // Shared notes: what one types, the other sees; both type, both texts stay.
  await alice.page.type('#notes', 'Venue: the old mill. ')
  await bob.page.waitForFunction(() => document.querySelector('#notes').value === 'Venue: the old mill. ')
  await bob.page.focus('#notes')
  await bob.page.keyboard.press('End')
  await bob.page.keyboard.type('Date: June.')
  await alice.page.waitForFunction(() => document.querySelector('#notes').value === 'Venue: the old mill. Date: June.')

  const shot = process.env.PF2_DEMO_SCREENSHOT ?? join(root, 'target', 'demo.png')
  mkdirSync(dirname(shot), { recursive: true })
  await alice.page.screenshot({ path: shot })
  await alice.context.close()
  await bob.context.close()
})
