// A stock socket.io-client@4.8 under sync rules (sync-server/tests/socketio.rs starts it with
// URL and TOKEN, a user who may read the room "lobby" and nothing else): a room it may not read
// is refused with AUTHZ_FAILED, one it may read is joined, and sending there (read only) is
// refused. Every wait is for an event; a global timer only turns a hang into a failure.
import { io } from "socket.io-client";
import assert from "node:assert/strict";

const { URL, TOKEN } = process.env;
const failAfter = setTimeout(() => { console.error("FAIL: timed out"); process.exit(2); }, 20000);
const once = (s, ev) => new Promise((resolve) => s.once(ev, resolve));

const s = io(URL, { auth: { token: TOKEN }, query: { clientId: "rules-client" }, transports: ["websocket"], reconnection: false, forceNew: true });
await once(s, "connected");
s.emit("join_room", { roomId: "secret" });
const refused = await once(s, "error");
assert.equal(refused.code, "AUTHZ_FAILED");
assert.ok(!JSON.stringify(refused).includes("room_joined"));
console.log("ok - a room it may not read is refused with AUTHZ_FAILED");
s.emit("join_room", { roomId: "lobby" });
assert.deepEqual(await once(s, "room_joined"), { roomId: "lobby" });
console.log("ok - a room it may read is joined");
s.emit("message", { type: "chat.message", roomId: "lobby", payload: { text: "hi" } });
assert.equal((await once(s, "error")).code, "AUTHZ_FAILED");
console.log("ok - sending needs write");
s.close();
clearTimeout(failAfter);
console.log("PASS");
