// Refetches a page's queries whenever the organisation changes, for as long as the page lives.
import { onBeforeUnmount } from 'vue'
import { useQueryClient } from '@tanstack/vue-query'
import { useLiveStore, type Change } from '@/stores/live'

export function useRefreshOnChange(keys: string[][], only: (change: Change) => boolean = () => true) {
  const client = useQueryClient()
  const live = useLiveStore()
  const stop = live.onChange((change) => {
    if (only(change)) keys.forEach((queryKey) => void client.invalidateQueries({ queryKey }))
  })
  onBeforeUnmount(stop)
}
