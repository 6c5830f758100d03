// Server-Sent Events over fetch, so that the session's Authorization header goes along (the
// browser's EventSource cannot send one). Reconnects with a capped, jittered backoff until
// stopped; `parseEvents` is the pure part, tested on its own.
import { ApiError, renewSession, sessionHeaders, type ErrorDetail } from './client'

export interface SseEvent {
  event: string
  data: string
  id?: string
}

/** Splits a text/event-stream buffer into complete events and the unfinished rest. */
export function parseEvents(buffer: string): { events: SseEvent[]; rest: string } {
  const events: SseEvent[] = []
  const normalised = buffer.replace(/\r\n?/g, '\n')
  const blocks = normalised.split('\n\n')
  const rest = blocks.pop() ?? ''
  for (const block of blocks) {
    let event = 'message'
    let id: string | undefined
    const data: string[] = []
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue
      const colon = line.indexOf(':')
      const field = colon === -1 ? line : line.slice(0, colon)
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '')
      if (field === 'event') event = value
      else if (field === 'data') data.push(value)
      else if (field === 'id') id = value
    }
    if (data.length > 0) events.push({ event, data: data.join('\n'), ...(id === undefined ? {} : { id }) })
  }
  return { events, rest }
}

/** Hands over each event of a text/event-stream body until it ends. */
async function readEvents(body: ReadableStream, onEvent: (event: SseEvent) => void): Promise<void> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    const parsed = parseEvents(buffer + value)
    buffer = parsed.rest
    parsed.events.forEach(onEvent)
  }
}

export interface Subscription {
  stop(): void
}

/**
 * Follows `path` until stopped: `onEvent` for each event, `onState` when the stream opens or
 * breaks. `path` may change between reconnects (e.g. to resume after the last seen id).
 */
export function subscribe(
  path: () => string,
  onEvent: (event: SseEvent) => void,
  onState: (connected: boolean) => void = () => {},
): Subscription {
  const controller = new AbortController()
  let attempt = 0
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(path(), {
          headers: { ...sessionHeaders(), Accept: 'text/event-stream' },
          signal: controller.signal,
        })
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`)
        attempt = 0
        onState(true)
        await readEvents(response.body, onEvent)
      } catch {
        if (controller.signal.aborted) return
      }
      onState(false)
      attempt += 1
      const wait = Math.min(10_000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2)
      await new Promise((resolve) => setTimeout(resolve, wait))
    }
  }
  void run()
  return { stop: () => controller.abort() }
}

/**
 * Posts `body` to `path` asking for a streamed answer, and hands each event over until the
 * stream ends (one answer, no reconnecting: the request may have cost something). An error
 * answer before the stream starts is thrown as an ApiError.
 */
export async function postForEvents(
  path: string,
  body: unknown,
  onEvent: (event: SseEvent) => void,
  signal?: AbortSignal,
): Promise<void> {
  const send = () =>
    fetch(path, {
      method: 'POST',
      headers: { ...sessionHeaders(), Accept: 'text/event-stream', 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal,
    })
  let response = await send()
  if (response.status === 401 && (await renewSession())) response = await send()
  if (!response.ok || !response.body) {
    const answer = (await response.json().catch(() => undefined)) as { error?: Partial<ErrorDetail> } | undefined
    throw new ApiError(response.status, answer?.error)
  }
  await readEvents(response.body, onEvent)
}
