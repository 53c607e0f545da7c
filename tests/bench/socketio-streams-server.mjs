// The Socket.IO 4.8 peer for the event-stream resume benchmark: connection-state recovery on
// (2 minutes), a token check, and `POST /publish?n=N` broadcasting N events to every socket
// (recovered sockets get what they missed from the server's in-memory buffer).
// Usage: node socketio-streams-server.mjs PORT
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 3202);
let seq = 0;
const httpServer = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (req.method === "POST" && url.pathname === "/publish") {
    const n = Number(url.searchParams.get("n") ?? 1);
    for (let i = 0; i < n; i++) io.emit("event", { sequence: ++seq, payload: { n: seq } });
    res.writeHead(201).end(JSON.stringify({ sequence: seq }));
    return;
  }
  res.writeHead(404).end();
});
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
});
io.use((socket, next) => (socket.handshake.auth?.token ? next() : next(new Error("AUTH_FAILED"))));
httpServer.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
