// Type tests (`tsc -p test/types`, in make test): what a typed client accepts, and — each
// `@ts-expect-error` must stay an error, or tsc fails on the unused directive — what it refuses.
import { createSyncClient, type Row, type SyncClient } from '../../dist/index.js'
import { SyncProvider, useEntity, useQuery } from '../../dist/react.js'

interface Todo {
  title: string
  done: boolean
  priority: number
  note?: string
}
interface Note {
  body: string
}
type AppSchema = { todo: Todo; note: Note }

declare module '../../dist/react.js' {
  interface Register {
    schema: AppSchema
  }
}

export async function typed(options: Parameters<typeof createSyncClient>[0]) {
  const client = await createSyncClient<AppSchema>(options)

  await client.mutate('todo', 't1', { title: 'milk', done: false, priority: 1 })
  await client.mutate('todo', 't1', { done: true }) // a patch: some fields
  await client.mutate('todo', 't1', { note: null }) // null removes an optional field
  await client.mutate('todo', 't1', null) // null deletes
  // @ts-expect-error: no such entity type
  await client.mutate('todos', 't1', { title: 'x' })
  // @ts-expect-error: a field of the wrong type
  await client.mutate('todo', 't1', { done: 'yes' })
  // @ts-expect-error: not a field of todo
  await client.mutate('todo', 't1', { colour: 'red' })
  // @ts-expect-error: a required field cannot be removed
  await client.mutate('todo', 't1', { title: null })

  const t: Todo | undefined = client.get('todo', 't1')
  // @ts-expect-error: a note is not a todo
  const wrong: Todo | undefined = client.get('note', 'n1')
  // @ts-expect-error: no such field
  client.get('todo', 't1')?.colour

  const rows: Array<Row<Todo>> = client.query('todo', { where: { done: false, priority: { gte: 2 } }, orderBy: [{ priority: 'desc' }, 'title'], limit: 10 })
  client.query('todo', { where: (v) => v.title.startsWith('m') })
  client.query('todo', { where: { priority: { in: [1, 2] } } })
  // @ts-expect-error: a range of the wrong type
  client.query('todo', { where: { priority: { gte: 'high' } } })
  // @ts-expect-error: not a field to order by
  client.query('todo', { orderBy: 'colour' })
  // @ts-expect-error: asc or desc
  client.query('todo', { orderBy: { title: 'up' } })
  // @ts-expect-error: the predicate sees a Todo
  client.query('todo', { where: (v) => v.body === '' })

  const stop = client.watch('todo', { where: { done: false } }, (open) => {
    const first: Todo | undefined = open[0]?.value
    void first
  })
  stop()

  // Untyped, any name and any fields go.
  const loose: SyncClient = await createSyncClient(options)
  await loose.mutate('anything', 'x', { whatever: 1 })
  return [t, wrong, rows]
}

export function Todos() {
  const open = useQuery('todo', { where: { done: false }, orderBy: { priority: 'desc' } })
  const one = useEntity('todo', 't1')
  // @ts-expect-error: the registered schema has no such type
  useQuery('todos')
  // @ts-expect-error: the registered schema's todo has no colour
  useQuery('todo', { where: { colour: 'red' } })
  return (
    <ul>
      {open.map((r) => (
        <li key={r.id}>{r.value.title + (one?.note ?? '')}</li>
      ))}
    </ul>
  )
}

export function App({ client }: { client: SyncClient<AppSchema> }) {
  return (
    <SyncProvider client={client}>
      <Todos />
    </SyncProvider>
  )
}
