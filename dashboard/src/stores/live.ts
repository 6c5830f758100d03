// The organisation's live changes (GET /changes): pages refresh what they show when something
// changes, and failures and lost targets become notifications.
import { defineStore } from 'pinia'
import { ref } from 'vue'
import { subscribe, type Subscription } from '@/api/sse'

export interface Change {
  kind: string
  object: string
  detail: string | null
  at: string
}

export interface Progress {
  deployment_id: string
  seq: number
  at: string
  level: string
  message: string
  percent: number | null
  outcome: string | null
}

export interface Notice {
  id: number
  kind: string
  object: string
  detail: string | null
  at: string
  read: boolean
}

/** The changes that deserve a notification. */
const NOTIFIED = new Set(['deployment.failed', 'agent.disconnected', 'agent.revoked', 'deployment.drift_repaired'])

export const useLiveStore = defineStore('live', () => {
  const connected = ref(false)
  const notices = ref<Notice[]>([])
  const changeListeners = new Set<(change: Change) => void>()
  const progressListeners = new Set<(progress: Progress) => void>()
  let subscription: Subscription | null = null
  let next = 1

  function start() {
    stop()
    subscription = subscribe(
      () => '/api/v1/changes',
      (event) => {
        if (event.event === 'change') {
          const change = JSON.parse(event.data) as Change
          if (NOTIFIED.has(change.kind)) {
            notices.value = [{ id: next++, read: false, ...change }, ...notices.value].slice(0, 100)
          }
          changeListeners.forEach((listener) => listener(change))
        } else if (event.event === 'progress') {
          const progress = JSON.parse(event.data) as Progress
          progressListeners.forEach((listener) => listener(progress))
        }
      },
      (open) => (connected.value = open),
    )
  }

  function stop() {
    subscription?.stop()
    subscription = null
    connected.value = false
  }

  /** Calls `listener` on every change until the returned function is called. */
  function onChange(listener: (change: Change) => void) {
    changeListeners.add(listener)
    return () => changeListeners.delete(listener)
  }

  function onProgress(listener: (progress: Progress) => void) {
    progressListeners.add(listener)
    return () => progressListeners.delete(listener)
  }

  function markAllRead() {
    notices.value = notices.value.map((n) => ({ ...n, read: true }))
  }

  return { connected, notices, start, stop, onChange, onProgress, markAllRead }
})
