import react from '@vitejs/plugin-react'
import { defineConfig } from 'vite'

export default defineConfig({
  plugins: [react()],
  // The SDK finds its .wasm with `new URL(…, import.meta.url)`; pre-bundling would move the
  // module away from its file in dev. `vite build` handles it either way.
  optimizeDeps: { exclude: ['@pf2/sync'] },
  // One React: `@pf2/sync` linked from ../../js (file: dependency) would otherwise bring the
  // copy in js/node_modules. An app installing the package from the registry needs neither.
  resolve: { dedupe: ['react', 'react-dom'] },
  build: { target: 'es2022' },
})
