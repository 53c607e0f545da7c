// The React test page's bundle (esbuild, by react.test.mjs): React, ReactDOM and the staged
// npm package — its base and its `@pf2/sync/react` entry point — as an app would import them.
import * as React from 'react'
import { createRoot } from 'react-dom/client'
import * as pf2 from '@pf2/sync'
import * as hooks from '@pf2/sync/react'

window.React = React
window.createRoot = createRoot
window.pf2 = pf2
window.hooks = hooks
await pf2.preload('/pkg/dist/wasm/pf2_sync_bg.wasm')
window.pf2Ready = true
