// Drives a stock socket.io-client@4.8 through every event of shared/seeds/api.md against a
// running sync-server. Started by sync-server/tests/socketio.rs with:
//   URL, TOKEN_A (user-a), TOKEN_B (user-b), TOKEN_OTHER (another tenant), ROOM.
// Every wait is for an event; a global timer only turns a hang into a failure.
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const { URL, TOKEN_A, TOKEN_B, TOKEN_OTHER, ROOM } = process.env;
const failAfter = setTimeout(() => { console.error("FAIL: timed out"); process.exit(2); }, 20000);

function connect(token, clientId) {
  const s = io(URL, { auth: { token }, query: { clientId }, transports: ["websocket"], reconnection: false, forceNew: true });
  if (process.env.VERBOSE) {
    s.onAny((ev, ...args) => console.error(`[${clientId}] ${ev} ${JSON.stringify(args)}`));
    s.on("connect", () => console.error(`[${clientId}] (connect)`));
    s.on("disconnect", (r) => console.error(`[${clientId}] (disconnect ${r})`));
  }
  return s;
}
const once = (s, ev) => new Promise((resolve) => s.once(ev, resolve));
const step = (name) => console.log(`ok - ${name}`);

// A bad token is refused at connect.
for (const [name, token] of JSON.parse(process.env.BAD_TOKENS ?? "[]").concat([["no token", ""]])) {
  const bad = connect(token, "bad-client");
  const err = await once(bad, "connect_error");
  assert.match(err.message, /AUTH_FAILED/, name);
  bad.close();
}
step("the JWT matrix (alg none, wrong algorithm, HS/RS confusion, expired, nbf, no exp, bad signature, key in header, no tenant) -> connect_error AUTH_FAILED");

// `connected` with api.md's fields.
const a = connect(TOKEN_A, "client-a");
const b = connect(TOKEN_B, "client-b");
const [ca, cb] = await Promise.all([once(a, "connected"), once(b, "connected")]);
for (const c of [ca, cb]) {
  assert.equal(typeof c.connectionId, "string");
  assert.ok(!Number.isNaN(Date.parse(c.serverTime)));
  assert.deepEqual(c.interactionClasses, ["CLASS_A", "CLASS_B", "CLASS_C", "CLASS_D"]);
}
step("connected {connectionId, serverTime, interactionClasses}");

// ping -> pong
a.emit("ping");
await once(a, "pong");
step("ping -> pong");

// join_room -> room_joined
a.emit("join_room", { roomId: ROOM });
assert.deepEqual(await once(a, "room_joined"), { roomId: ROOM });
b.emit("join_room", { roomId: ROOM });
assert.deepEqual(await once(b, "room_joined"), { roomId: ROOM });
step("join_room -> room_joined");

// A room message reaches the other member (and the native client the Rust test holds there,
// which answers; listen for the answer before sending so it cannot be missed).
const fromNativeP = new Promise((resolve) => a.on("message", (x) => { if (x.payload?.text === "from-native") resolve(x); }));
const gotB = once(b, "message");
a.emit("message", { type: "chat.message", roomId: ROOM, payload: { text: "from-socketio" } });
const ack = await once(a, "message_ack");
assert.equal(typeof ack.messageId, "string");
const m = await gotB;
assert.equal(m.messageId, ack.messageId);
assert.equal(m.type, "chat.message");
assert.equal(m.interactionClass, "CLASS_C");
assert.equal(m.senderId, "user-a");
assert.equal(m.roomId, ROOM);
assert.deepEqual(m.payload, { text: "from-socketio" });
assert.ok(m.tenantId && m.timestamp);
step("message to a room -> message_ack + message");

// The native client in the room answers; socket.io sees it.
const fromNative = await fromNativeP;
assert.equal(fromNative.roomId, ROOM);
step("a native client's room message reaches socket.io");

// A direct message reaches the recipient.
const direct = once(a, "message");
b.emit("message", { type: "chat.message", recipientId: "user-a", payload: { text: "hi a" } });
const d = await direct;
assert.equal(d.recipientId, "user-a");
assert.equal(d.senderId, "user-b");
step("direct message -> recipient");

// Presence (Class A) is relayed to room members, fire-and-forget.
const pres = once(b, "presence_update");
a.emit("presence_update", { status: "away", metadata: { statusMessage: "In a meeting" } });
const p = await pres;
assert.equal(p.userId, "user-a");
assert.equal(p.status, "away");
assert.deepEqual(p.metadata, { statusMessage: "In a meeting" });
step("presence_update relayed to room members");

// Class D never travels realtime.
a.emit("message", { type: "payment.create", interactionClass: "CLASS_D", recipientId: "user-b", payload: { amount: 1 } });
const e = await once(a, "error");
assert.equal(e.code, "CLASS_D_REALTIME_FORBIDDEN");
step("Class D message -> error CLASS_D_REALTIME_FORBIDDEN");

// Another tenant's socket in a room of the same name reaches nobody here.
const other = connect(TOKEN_OTHER, "client-x");
await once(other, "connected");
other.emit("join_room", { roomId: ROOM });
await once(other, "room_joined");
let leaked = false;
b.on("message", (x) => { if (x.payload?.text === "cross-tenant") leaked = true; });
other.emit("message", { type: "chat.message", roomId: ROOM, payload: { text: "cross-tenant" } });
await once(other, "message_ack");
// A message sent afterwards in our tenant arrives; the other tenant's never did.
const marker = once(b, "message");
a.emit("message", { type: "chat.message", roomId: ROOM, payload: { text: "marker" } });
assert.equal((await marker).payload.text, "marker");
assert.equal(leaked, false);
step("cross-tenant room is isolated");

// Sending to a room one has not joined is refused.
other.emit("message", { type: "chat.message", roomId: "never-joined", payload: {} });
assert.equal((await once(other, "error")).code, "AUTHZ_FAILED");
step("room messages need membership");

// leave_room -> room_left
a.emit("leave_room", { roomId: ROOM });
assert.deepEqual(await once(a, "room_left"), { roomId: ROOM });
step("leave_room -> room_left");

// Presence goes offline when a connection ends.
const offline = new Promise((resolve) => b.on("presence_update", (x) => { if (x.status === "offline") resolve(x); }));
b.emit("presence_update", { status: "online" });
const c2 = connect(TOKEN_A, "client-a2");
await once(c2, "connected");
c2.emit("join_room", { roomId: ROOM });
await once(c2, "room_joined");
const c2Online = new Promise((resolve) => b.on("presence_update", (x) => { if (x.clientId === "client-a2" && x.status === "online") resolve(x); }));
c2.emit("presence_update", { status: "online" });
await c2Online;
c2.close();
assert.equal((await offline).status, "offline");
step("presence goes offline on disconnect");

// The session's rate limit (api.md: 100 messages a minute per connection, the shipped default):
// past it every message is answered with a RATE_LIMIT warning, and after ten warnings the
// server ends the connection.
const flood = connect(TOKEN_A, "client-flood");
await once(flood, "connected");
let warnings = 0;
flood.on("error", (e) => { if (e.code === "RATE_LIMIT") warnings += 1; });
const ended = once(flood, "disconnect");
for (let i = 0; i < 130; i++) flood.emit("ping");
assert.equal(await ended, "io server disconnect");
assert.equal(warnings, 10);
step("over the rate limit -> RATE_LIMIT warnings, then the server disconnects");

// The session ends when its token expires (TOKEN_SHORT lives 2 s), as /v1/ws closes with 4401.
const lapsing = connect(process.env.TOKEN_SHORT, "client-lapsing");
await once(lapsing, "connected");
assert.equal(await once(lapsing, "disconnect"), "io server disconnect");
step("token expiry -> the server disconnects");

for (const s of [a, b, other]) s.close();
clearTimeout(failAfter);
console.log("PASS");
