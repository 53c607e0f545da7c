// Resume against the Socket.IO 4.8 peer, as tests/src/bin/streams.rs does against PF-2: N stock
// socket.io-client sockets connect and receive one event, lose their transport (as a network
// drop does; the client keeps its session id and offset), E events are broadcast meanwhile, and
// all N reconnect at once. Reports the time until each has every missed event, server CPU, and
// how many events never arrived. RESTART=1 waits for the server to be restarted (a line on
// stdin) before reconnecting. Usage: node socketio-resume.mjs PORT SERVER_PID_FILE N E LABEL
import { io } from "socket.io-client";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const [port, pidFile, n, e, label] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5]), process.argv[6]];
const url = `http://127.0.0.1:${port}`;
const ticks = Number(process.env.CLK_TCK ?? 100);
const cpu = () => {
  const pid = readFileSync(pidFile, "utf8").trim();
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(")").pop().trim().split(/\s+/);
  return (Number(f[11]) + Number(f[12])) / ticks;
};
const publish = async (k) => (await fetch(`${url}/publish?n=${k}`, { method: "POST" })).json();

const sockets = [];
for (let i = 0; i < n; i += 200) {
  const wave = [];
  for (let j = i; j < Math.min(n, i + 200); j++) {
    const s = io(url, { auth: { token: "bench" }, transports: ["websocket"], reconnection: false, forceNew: true });
    s.got = 0;
    s.on("event", () => { s.got++; if (s.got === s.want) s.doneAt?.(); });
    sockets.push(s);
    wave.push(new Promise((r) => s.once("connect", r)));
  }
  await Promise.all(wave);
}
const first = sockets.map((s) => new Promise((r) => { s.want = 1; s.doneAt = r; }));
await publish(1);
await Promise.all(first);
// The transport drops (not a client disconnect: the session id and offset are kept).
const gone = sockets.map((s) => new Promise((r) => s.once("disconnect", r)));
for (const s of sockets) s.io.engine.close();
await Promise.all(gone);
await publish(e);
if (process.env.RESTART) {
  console.error("READY FOR RESTART");
  await new Promise((r) => createInterface({ input: process.stdin }).once("line", r));
}
const cpu0 = cpu();
const t0 = performance.now();
const times = await Promise.all(sockets.map((s) => new Promise((resolve) => {
  s.got = 0;
  s.want = e;
  const give_up = setTimeout(() => resolve(null), 30000);
  s.doneAt = () => { clearTimeout(give_up); resolve(performance.now() - t0); };
  s.connect();
})));
const cpuUsed = cpu() - cpu0;
const done = times.filter((t) => t !== null).sort((a, b) => a - b);
const missing = sockets.reduce((m, s) => m + Math.max(0, e - s.got), 0);
const recovered = sockets.filter((s) => s.recovered).length;
const med = done.length ? done[Math.floor(done.length / 2)].toFixed(0) : "—";
const last = done.length === n ? done[done.length - 1].toFixed(0) : "—";
console.log(`| ${label} | ${n} | ${e} | ${med} | ${last} | ${cpuUsed.toFixed(2)} | ${missing} | ${recovered} of ${n} recovered |`);
for (const s of sockets) s.close();
process.exit(0);
