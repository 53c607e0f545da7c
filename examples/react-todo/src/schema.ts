// The app's entity types: the same todos as the plain demo (demo/app.js), so both apps share a
// list. Registered once for the hooks; `createSyncClient<AppSchema>` types the client.
export interface Todo {
  title: string
  done: boolean
  by: string
  createdAt: string
}

export type AppSchema = { todo: Todo }

declare module '@pf2/sync/react' {
  interface Register {
    schema: AppSchema
  }
}
