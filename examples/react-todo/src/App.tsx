import type { Row } from '@pf2/sync'
import { useDoc, usePresence, useQuery, useSyncClient, useSyncStatus } from '@pf2/sync/react'
import { memo, useEffect, useState, type FormEvent } from 'react'
import type { Todo } from './schema'

export function App({ user, users }: { user: string; users: string[] }) {
  const other = users[(users.indexOf(user) + 1) % users.length]
  return (
    <main>
      <header>
        <h1>Todos</h1>
        <span>
          as <b id="me">{user}</b> · <a href={`?user=${other}${serverParam()}`}>open as {other}</a>
        </span>
        <Status />
      </header>
      <People user={user} />
      <AddTodo user={user} />
      <OpenTodos />
      <DoneTodos />
      <Note />
    </main>
  )
}

const serverParam = () => {
  const s = new URLSearchParams(location.search).get('server')
  return s ? `&server=${encodeURIComponent(s)}` : ''
}

function Status() {
  const { status, pendingCount, progress } = useSyncStatus()
  return (
    <span id="status" data-status={status} data-pending={pendingCount}>
      {status}
      {pendingCount > 0 && ` · ${pendingCount} to send`}
      {progress && ` · syncing ${progress.received} of ${progress.total}`}
    </span>
  )
}

/** Class A: who else has the list open (best effort). */
function People({ user }: { user: string }) {
  const { others, set } = usePresence('todos')
  const client = useSyncClient()
  useEffect(() => {
    const announce = () => set({ status: document.hidden ? 'away' : 'online', metadata: { name: user } })
    announce()
    const offStatus = client.on('status', (s) => s === 'live' && announce())
    document.addEventListener('visibilitychange', announce)
    return () => {
      offStatus()
      document.removeEventListener('visibilitychange', announce)
    }
  }, [client, set, user])
  const names = [...new Set(others.map((p) => p.userId).filter((u) => u !== user))].sort()
  return <p id="people">{names.length ? `here too: ${names.join(', ')}` : 'nobody else here'}</p>
}

function AddTodo({ user }: { user: string }) {
  const client = useSyncClient()
  const [title, setTitle] = useState('')
  const add = (e: FormEvent) => {
    e.preventDefault()
    if (!title.trim()) return
    client.mutate('todo', crypto.randomUUID(), { title: title.trim(), done: false, by: user, createdAt: new Date().toISOString() })
    setTitle('')
  }
  return (
    <form onSubmit={add}>
      <input id="new-title" value={title} onChange={(e) => setTitle(e.target.value)} placeholder="What needs doing?" />
      <button id="add">Add</button>
    </form>
  )
}

/** The live query: open todos, oldest first. Re-renders only when that list changes. */
function OpenTodos() {
  const open = useQuery('todo', { where: { done: false }, orderBy: [{ createdAt: 'asc' }] })
  return (
    <section>
      <h2>Open ({open.length})</h2>
      <ul id="open">
        {open.map((row) => (
          <TodoItem key={row.id} row={row} />
        ))}
      </ul>
    </section>
  )
}

function DoneTodos() {
  const done = useQuery('todo', { where: { done: true }, orderBy: { createdAt: 'desc' }, limit: 20 })
  return (
    <section>
      <h2>Done</h2>
      <ul id="done">
        {done.map((row) => (
          <TodoItem key={row.id} row={row} />
        ))}
      </ul>
    </section>
  )
}

/** Unchanged rows keep their object, so `memo` skips them. */
const TodoItem = memo(function TodoItem({ row }: { row: Row<Todo> }) {
  const client = useSyncClient()
  const [title, setTitle] = useState(row.value.title)
  useEffect(() => setTitle(row.value.title), [row.value.title])
  const save = () => title !== row.value.title && client.mutate('todo', row.id, { title })
  return (
    <li data-id={row.id} data-title={row.value.title}>
      <input type="checkbox" checked={row.value.done} onChange={(e) => client.mutate('todo', row.id, { done: e.target.checked })} />
      <input className="title" value={title} onChange={(e) => setTitle(e.target.value)} onBlur={save} onKeyDown={(e) => e.key === 'Enter' && save()} />
      <small>{row.value.by}</small>
      <button className="delete" onClick={() => client.mutate('todo', row.id, null)} aria-label="delete">
        ×
      </button>
    </li>
  )
})

/** A collaborative note (Automerge text): concurrent edits merge, offline edits too. */
function Note() {
  // The same document and initial structure as the plain demo's notes.
  const { value, handle } = useDoc<{ text: string }>('demo-notes', { init: (d) => d.putText(['text'], '') })
  const text = value?.text ?? ''
  const edit = (next: string) => {
    if (!handle) return
    // The edit as one splice: the common prefix and suffix stay.
    let start = 0
    while (start < text.length && start < next.length && text[start] === next[start]) start++
    let end = 0
    while (end < text.length - start && end < next.length - start && text[text.length - 1 - end] === next[next.length - 1 - end]) end++
    handle.change((d) => d.splice(['text'], start, text.length - start - end, next.slice(start, next.length - end)))
  }
  return (
    <section>
      <h2>Notes</h2>
      <textarea id="note" value={text} disabled={!handle} onChange={(e) => edit(e.target.value)} rows={5} />
    </section>
  )
}
