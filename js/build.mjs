// Build the npm package: sdk-wasm → wasm32 (size profile) → wasm-bindgen --target web →
// wasm-opt -Oz (npm binaryen; Debian's breaks the module, TOOLCHAIN.md) → tsc.
// Usage: node build.mjs   (from js/; `npm pack` afterwards makes the tarball)
import { execFileSync } from 'node:child_process'
import { cpSync, mkdirSync, rmSync, statSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const run = (cmd, args, cwd = here) => execFileSync(cmd, args, { cwd, stdio: 'inherit' })

run('cargo', ['build', '-p', 'sdk-wasm', '--target', 'wasm32-unknown-unknown', '--profile', 'wasm-release', '--locked'], root)
const gen = join(here, 'src', 'wasm')
rmSync(gen, { recursive: true, force: true })
run('wasm-bindgen', [
  '--target', 'web', '--out-dir', gen, '--out-name', 'pf2_sync',
  join(root, 'target', 'wasm32-unknown-unknown', 'wasm-release', 'sdk_wasm.wasm'),
])
const wasm = join(gen, 'pf2_sync_bg.wasm')
run(join(here, 'node_modules', '.bin', 'wasm-opt'), ['-Oz', wasm, '-o', wasm])
rmSync(join(here, 'dist'), { recursive: true, force: true })
run(join(here, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'])
mkdirSync(join(here, 'dist', 'wasm'), { recursive: true })
for (const f of ['pf2_sync.js', 'pf2_sync.d.ts', 'pf2_sync_bg.wasm']) {
  cpSync(join(gen, f), join(here, 'dist', 'wasm', f))
}
const bytes = readFileSync(wasm)
console.log(`wasm: ${statSync(wasm).size} bytes, ${gzipSync(bytes, { level: 9 }).length} gzipped`)
