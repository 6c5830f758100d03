// The targets a deploy dialog offers, and the platforms the chosen one reported (available or
// not, with the agent's reason), as the stack and template deploy dialogs show them.
import { computed, type Ref } from 'vue'
import { useQuery } from '@tanstack/vue-query'
import { api, call } from '@/api/client'

export type Platform = 'docker' | 'swarm' | 'kubernetes' | 'libvirt'
const STACK_PLATFORMS: Platform[] = ['swarm', 'kubernetes', 'docker', 'libvirt']

export function useDeployTargets(open: Ref<boolean>, target: Ref<string>) {
  const targets = useQuery({
    queryKey: ['targets', 'list', 'deployable'],
    enabled: open,
    queryFn: () => call((headers) => api.GET('/api/v1/targets', { headers, params: { query: { per_page: 500 } } })),
  })
  const choices = computed(() => (targets.data.value?.items ?? []).filter((t) => t.status !== 'revoked'))
  const chosen = computed(() => choices.value.find((c) => c.id === target.value))
  const platforms = computed(() =>
    STACK_PLATFORMS.flatMap((p) => {
      const capability = chosen.value?.capabilities.find((c) => c.platform === p)
      return capability ? [{ platform: p, available: capability.available, detail: capability.detail }] : []
    }),
  )
  return { choices, platforms }
}
