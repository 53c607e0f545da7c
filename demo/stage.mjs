// Stage the demo site: the demo's files, the packed @pf2/sync tarball unpacked at /pkg, and a
// config.js with a development token per demo user (minted by `sync-server token`, so with the
// secret the server will use).  Usage: node demo/stage.mjs <out-dir> <sync-server-binary> [tenant]
import { execFileSync } from 'node:child_process'
import { cpSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const jsDir = join(here, '..', 'js')

/** `npm pack` the package (as it would be published) and unpack it at `<www>/pkg`. */
export function stagePackage(www) {
  const out = join(www, '..', `pack-${process.pid}`)
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  execFileSync('npm', ['pack', '--pack-destination', out, '--silent'], { cwd: jsDir, stdio: ['ignore', 'ignore', 'inherit'] })
  const tgz = readdirSync(out).find((f) => f.endsWith('.tgz'))
  if (!tgz) throw new Error('npm pack produced no tarball')
  rmSync(join(www, 'pkg'), { recursive: true, force: true })
  mkdirSync(join(www, 'pkg'), { recursive: true })
  execFileSync('tar', ['xzf', join(out, tgz), '-C', join(www, 'pkg'), '--strip-components=1'])
  rmSync(out, { recursive: true, force: true })
}

export const DEMO_USERS = ['alice', 'bob', 'carol']

export function stageDemo(www, bin, tenant = 'demo', env = process.env) {
  mkdirSync(www, { recursive: true })
  for (const f of ['index.html', 'app.js', 'demo.css']) cpSync(join(here, f), join(www, f))
  stagePackage(www)
  const tokens = Object.fromEntries(
    DEMO_USERS.map((u) => [
      u,
      execFileSync(bin, ['token', '--tenant', tenant, '--user', u, '--ttl', String(30 * 24 * 3600)], { env })
        .toString()
        .trim(),
    ]),
  )
  writeFileSync(
    join(www, 'config.js'),
    `// Written by demo/stage.mjs: development tokens, valid 30 days. Never do this in production.\n` +
      `export default ${JSON.stringify({ tenant, tokens }, null, 2)}\n`,
  )
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [out, bin, tenant] = process.argv.slice(2)
  if (!out || !bin) {
    console.error('usage: node demo/stage.mjs <out-dir> <sync-server-binary> [tenant]')
    process.exit(2)
  }
  stageDemo(resolve(out), resolve(bin), tenant)
  console.log(`demo staged in ${out}`)
}
