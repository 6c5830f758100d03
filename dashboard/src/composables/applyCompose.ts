// A reviewed Compose file becomes the stack's next version and is deployed where it was
// proposed for: what the diagnosis and the optimiser offer in one click.
import { api, call } from '@/api/client'

export async function applyCompose(stackId: string, targetId: string, compose: string): Promise<void> {
  await call((headers) => api.PUT('/api/v1/stacks/{id}', { headers, params: { path: { id: stackId } }, body: { compose } }))
  await call((headers) =>
    api.POST('/api/v1/stacks/{id}/deploy/{target_id}', { headers, params: { path: { id: stackId, target_id: targetId }, query: {} } }),
  )
}
