// The Socket.IO 4.8 peer for the fan-out benchmark: the same relay work as PF-2's room messages
// (token check, join the room named in the handshake query, relay each message to the room's
// other members). Usage: node socketio-server.mjs PORT
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 3102);
const httpServer = createServer();
const io = new Server(httpServer, { transports: ["websocket"], perMessageDeflate: false });
io.use((socket, next) => (socket.handshake.auth?.token ? next() : next(new Error("AUTH_FAILED"))));
io.on("connection", (socket) => {
  const room = String(socket.handshake.query.room ?? "default");
  socket.join(room);
  socket.on("message", (m) => socket.to(room).emit("message", m));
});
httpServer.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
