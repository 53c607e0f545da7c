// The demo: a collaborative todo list on @pf2/sync. `config.js` is written by `make run`
// (server URL, tenant, one development token per demo user).
import { createSyncClient, preload } from '/pkg/dist/index.js'
import config from './config.js'

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const users = Object.keys(config.tokens)
const user = users.includes(params.get('user')) ? params.get('user') : users[0]
// One client id per browser profile and user: the queue in IndexedDB is kept under it.
const key = `pf2-demo-client:${user}`
const clientId = localStorage.getItem(key) ?? `${user}-${crypto.randomUUID().slice(0, 8)}`
localStorage.setItem(key, clientId)

await preload()
const client = await createSyncClient({
  url: location.origin,
  tenantId: config.tenant,
  clientId,
  getToken: () => config.tokens[user],
})
window.client = client

$('me').textContent = user
$('client').textContent = clientId
const other = users[(users.indexOf(user) + 1) % users.length]
$('other').textContent = `open as ${other}`
$('other').href = `?user=${other}`

const colors = ['#3056d3', '#d53f8c', '#2f855a', '#c05621', '#6b46c1']
const color = (name) => colors[[...name].reduce((a, c) => a + c.charCodeAt(0), 0) % colors.length]

// --- the list --------------------------------------------------------------------------
function render() {
  const ul = $('todos')
  ul.replaceChildren()
  const todos = client.query('todo').sort((a, b) => (a.value.createdAt ?? '').localeCompare(b.value.createdAt ?? ''))
  for (const { id, value } of todos) {
    const li = document.createElement('li')
    li.className = value.done ? 'done' : ''
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', checked: !!value.done })
    box.onchange = () => client.mutate('todo', id, { done: box.checked })
    const text = Object.assign(document.createElement('span'), { textContent: value.title })
    const by = Object.assign(document.createElement('small'), { className: 'by', textContent: value.by ?? '' })
    const del = Object.assign(document.createElement('button'), { className: 'secondary', textContent: '✕', title: 'delete' })
    del.onclick = () => client.mutate('todo', id, null)
    li.append(box, text, by, del)
    ul.append(li)
  }
  const mine = $('private')
  mine.replaceChildren()
  for (const { id, value } of client.query('private')) {
    const li = document.createElement('li')
    const text = Object.assign(document.createElement('span'), { textContent: value.title })
    const del = Object.assign(document.createElement('button'), { className: 'secondary', textContent: '✕', title: 'delete' })
    del.onclick = () => client.mutate('private', id, null)
    li.append(text, del)
    mine.append(li)
  }
  const n = client.pendingCount
  $('pending').textContent = n ? `${n} change${n === 1 ? '' : 's'} waiting to sync` : 'All changes synced.'
}

$('add').onsubmit = async (e) => {
  e.preventDefault()
  const title = $('title').value.trim()
  if (!title) return
  $('title').value = ''
  await client.mutate('todo', crypto.randomUUID(), { title, done: false, by: user, createdAt: new Date().toISOString() })
}

$('add-private').onsubmit = async (e) => {
  e.preventDefault()
  const title = $('private-title').value.trim()
  if (!title) return
  $('private-title').value = ''
  await client.mutate('private', crypto.randomUUID(), { title, owner: user })
}

// --- shared notes: a collaborative text (client.doc loads @pf2/sync/automerge) ------------
const notes = await client.doc('demo-notes', { init: (d) => d.putText(['text'], '') })
const area = $('notes')
area.value = notes.text(['text'])
area.oninput = () => {
  // One splice for what changed: the common prefix and suffix stay.
  const [was, now] = [notes.text(['text']), area.value]
  let start = 0
  while (start < was.length && start < now.length && was[start] === now[start]) start++
  let end = 0
  while (end < was.length - start && end < now.length - start && was[was.length - 1 - end] === now[now.length - 1 - end]) end++
  notes.change((d) => d.splice(['text'], start, was.length - start - end, now.slice(start, now.length - end)))
}
notes.on('change', ({ local }) => {
  if (local) return
  // Someone else typed: keep the caret where it was, relative to the text around it.
  const [from, to] = [area.selectionStart, area.selectionEnd]
  const before = area.value
  area.value = notes.text(['text'])
  const shift = area.value.length - before.length
  const moved = (i) => (before.slice(0, i) === area.value.slice(0, i) ? i : Math.max(0, i + shift))
  area.setSelectionRange(moved(from), moved(to))
})

// --- status and the offline switch -----------------------------------------------------
function showStatus(s) {
  $('status').textContent = s
  $('status').dataset.status = s
  render()
}
client.on('status', showStatus)
client.on('change', render)
$('offline').onchange = () => ($('offline').checked ? client.disconnect() : client.connect())

// --- presence avatars ------------------------------------------------------------------
const people = new Map([[user, 'online']])
function renderPeople() {
  $('people').replaceChildren(
    ...[...people].filter(([, s]) => s !== 'offline').map(([name, s]) => {
      const a = Object.assign(document.createElement('div'), { className: `avatar ${s}`, textContent: name[0].toUpperCase(), title: `${name} (${s})` })
      a.style.background = color(name)
      return a
    }),
  )
}
client.presence.on('change', (p) => {
  people.set(p.userId, p.status)
  renderPeople()
})
client.on('status', (s) => {
  if (s === 'live') {
    client.rooms.join('todos')
    client.presence.set({ status: document.hidden ? 'away' : 'online', roomId: 'todos' })
  }
})
document.addEventListener('visibilitychange', () =>
  client.presence.set({ status: document.hidden ? 'away' : 'online', roomId: 'todos' }),
)

// --- the conflict inbox ----------------------------------------------------------------
async function refreshInbox() {
  let open = []
  try {
    open = await client.conflicts.list()
  } catch {
    return // offline: the inbox waits
  }
  $('inbox').hidden = open.length === 0
  $('conflicts').replaceChildren(
    ...open.map((c) => {
      const li = document.createElement('li')
      li.innerHTML = `<b></b>: theirs <q></q>, yours <q></q><div class="choices"></div>`
      li.querySelector('b').textContent = c.serverState?.title ?? c.entityId
      const [theirs, yours] = li.querySelectorAll('q')
      theirs.textContent = JSON.stringify(c.serverState)
      yours.textContent = JSON.stringify(c.clientState)
      for (const [label, choice] of [['keep theirs', 'server'], ['keep yours', 'client']]) {
        const b = Object.assign(document.createElement('button'), { className: 'secondary', textContent: label })
        b.onclick = async () => {
          await client.conflicts.resolve(c.conflictId, choice)
          refreshInbox()
        }
        li.querySelector('.choices').append(b)
      }
      return li
    }),
  )
}
client.on('conflict', refreshInbox)
client.on('status', (s) => s === 'live' && refreshInbox())

showStatus(client.status)
renderPeople()
