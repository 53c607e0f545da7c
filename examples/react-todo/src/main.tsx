// Starts the client and renders the app. The server and the development tokens come from
// `make run`: this app lives on its own origin (Vite's, :5173) and reaches the server across
// origins — the server must list this origin (--cors-allowed-origin; make run does for :5173).
import { createSyncClient, type SyncClient } from '@pf2/sync'
import { SyncProvider } from '@pf2/sync/react'
import { StrictMode } from 'react'
import { createRoot } from 'react-dom/client'
import { App } from './App'
import type { AppSchema } from './schema'
import './styles.css'

const params = new URLSearchParams(location.search)
const server = params.get('server') ?? import.meta.env.VITE_PF2_URL ?? 'http://127.0.0.1:3000'
const root = createRoot(document.getElementById('root')!)

async function start(): Promise<{ client: SyncClient<AppSchema>; user: string; users: string[] }> {
  // Development tokens written by `make run` (demo/stage.mjs). A real app gets its token from
  // its own sign-in; never ship tokens like this.
  const config: { tenant: string; tokens: Record<string, string> } = (await import(/* @vite-ignore */ `${server}/config.js`)).default
  const users = Object.keys(config.tokens)
  const user = users.includes(params.get('user') ?? '') ? params.get('user')! : users[0]
  // One client id per browser profile and user: the offline queue is kept under it.
  const key = `pf2-react-client:${user}`
  const clientId = localStorage.getItem(key) ?? `${user}-react-${crypto.randomUUID().slice(0, 8)}`
  localStorage.setItem(key, clientId)
  const client = await createSyncClient<AppSchema>({ url: server, tenantId: config.tenant, clientId, getToken: () => config.tokens[user] })
  return { client, user, users }
}

start().then(
  ({ client, user, users }) => {
    ;(window as any).client = client
    root.render(
      <StrictMode>
        <SyncProvider client={client}>
          <App user={user} users={users} />
        </SyncProvider>
      </StrictMode>,
    )
  },
  (e) => root.render(<p className="error" id="error">Cannot reach the sync server at {server}: {String(e?.message ?? e)}</p>),
)
