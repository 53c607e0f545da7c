// Build the npm package: sdk-wasm and sdk-wasm-automerge → wasm32 (size profile) → wasm-bindgen --target web →
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

// Two modules: the base (sdk-wasm) and the documents module (sdk-wasm-automerge), which only
// the `@pf2/sync/automerge` entry point loads.
const modules = [
  { crate: 'sdk-wasm', file: 'sdk_wasm', name: 'pf2_sync' },
  { crate: 'sdk-wasm-automerge', file: 'sdk_wasm_automerge', name: 'pf2_automerge' },
]
// One cargo run per module: built together, cargo would unify their dependencies' features and
// the base module would carry some of the documents module's.
for (const m of modules) {
  run('cargo', ['build', '-p', m.crate, '--target', 'wasm32-unknown-unknown', '--profile', 'wasm-release', '--locked'], root)
}
const gen = join(here, 'src', 'wasm')
rmSync(gen, { recursive: true, force: true })
for (const m of modules) {
  run('wasm-bindgen', [
    '--target', 'web', '--out-dir', gen, '--out-name', m.name,
    join(root, 'target', 'wasm32-unknown-unknown', 'wasm-release', `${m.file}.wasm`),
  ])
  const wasm = join(gen, `${m.name}_bg.wasm`)
  run(join(here, 'node_modules', '.bin', 'wasm-opt'), ['-Oz', wasm, '-o', wasm])
}
rmSync(join(here, 'dist'), { recursive: true, force: true })
run(join(here, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'])
mkdirSync(join(here, 'dist', 'wasm'), { recursive: true })
for (const m of modules) {
  for (const f of [`${m.name}.js`, `${m.name}.d.ts`, `${m.name}_bg.wasm`]) {
    cpSync(join(gen, f), join(here, 'dist', 'wasm', f))
  }
  const wasm = join(gen, `${m.name}_bg.wasm`)
  const bytes = readFileSync(wasm)
  console.log(`${m.name}.wasm: ${statSync(wasm).size} bytes, ${gzipSync(bytes, { level: 9 }).length} gzipped`)
}
