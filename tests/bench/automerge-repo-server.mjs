// automerge-repo 2.5's Node sync server, as its README sets one up: a WebSocket server adapter and
// filesystem storage, sharing nothing unasked. The peer in docs/benchmarks.md (documents).
// Usage: node automerge-repo-server.mjs PORT STORAGE_DIR   (SIGTERM: flush storage, exit)
import { WebSocketServer } from 'ws'
import { Repo } from '@automerge/automerge-repo'
import { NodeWSServerAdapter } from '@automerge/automerge-repo-network-websocket'
import { NodeFSStorageAdapter } from '@automerge/automerge-repo-storage-nodefs'

const [port, dir] = process.argv.slice(2)
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(port) })
const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dir),
  sharePolicy: async () => false,
})
process.on('SIGTERM', async () => {
  await repo.flush()
  process.exit(0)
})
wss.on('listening', () => console.log('ready'))
