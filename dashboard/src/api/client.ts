// The one way the dashboard talks to the control plane: the typed client generated from the
// API's OpenAPI document (src/api/schema.d.ts, never written by hand). `call` adds the session,
// renews it once when the access token expired, and turns error answers into `ApiError`.
import createClient from 'openapi-fetch'
import { retrying } from './retry'
import type { components, paths } from './schema'

export type Schemas = components['schemas']
export type ErrorDetail = Schemas['ErrorDetail']

// `fetch` is looked up at each call, not when this module loads. Reads the network dropped are
// tried again; changes are not (they may have landed).
export const api = createClient<paths>({
  baseUrl: '',
  fetch: (request) =>
    request.method === 'GET' ? retrying(() => globalThis.fetch(request.clone())) : globalThis.fetch(request),
})

/** An error answer of the API, with its code from the API's code table. */
export class ApiError extends Error {
  readonly code: string
  readonly status: number
  readonly field: string | undefined
  readonly details: unknown

  constructor(status: number, detail: Partial<ErrorDetail> | undefined) {
    super(detail?.message ?? `the control plane answered ${status}`)
    this.name = 'ApiError'
    this.status = status
    this.code = detail?.code ?? 'unknown'
    this.field = detail?.field ?? undefined
    this.details = detail?.details
  }
}

/** What `call` needs from the session: the headers, and a way to renew it. */
export interface Session {
  headers(): Record<string, string>
  renew(): Promise<boolean>
}

let session: Session | null = null

export function useSession(current: Session | null): void {
  session = current
}

export function sessionHeaders(): Record<string, string> {
  return session?.headers() ?? {}
}

/** Renews the session once its access token expired; whether that worked. */
export async function renewSession(): Promise<boolean> {
  return session ? session.renew() : false
}

type Answer<T> = { data?: T; error?: unknown; response: Response }

/**
 * Runs one API request (a function of the headers to send), renewing the session once on
 * 401; answers the data or throws an ApiError.
 */
export async function call<T>(request: (headers: Record<string, string>) => Promise<Answer<T>>): Promise<T> {
  let answer = await request(sessionHeaders())
  if (answer.response.status === 401 && session && (await session.renew())) {
    answer = await request(sessionHeaders())
  }
  if (answer.error !== undefined || !answer.response.ok) {
    const body = answer.error as { error?: Partial<ErrorDetail> } | undefined
    throw new ApiError(answer.response.status, body?.error)
  }
  return answer.data as T
}
