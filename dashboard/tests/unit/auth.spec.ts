import { beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { useAuthStore } from '@/stores/auth'
import { api, call } from '@/api/client'

type Handler = (request: Request) => Response | Promise<Response>

function answer(status: number, body: unknown) {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

const me = { id: 'u', username: 'alice', is_admin: false, created_at: '', totp_enabled: false, second_factor: false, source: 'local', locale: null, org: { id: 'o', role: 'operator' }, orgs: [] }

function serve(handler: Handler) {
  vi.stubGlobal('fetch', vi.fn((input: Request) => handler(input)))
}

describe('the session', () => {
  beforeEach(() => {
    localStorage.clear()
    setActivePinia(createPinia())
  })

  it('signs in in two steps when the account has a second factor', async () => {
    serve(async (request) => {
      const url = new URL(request.url, 'http://x')
      if (url.pathname === '/api/v1/auth/login') return answer(401, { error: { code: 'second_factor_required', message: 'code', details: { mfa_token: 'm1' } } })
      if (url.pathname === '/api/v1/auth/login/totp') {
        expect(await request.json()).toEqual({ mfa_token: 'm1', code: '123456' })
        return answer(200, { access_token: 'a1', refresh_token: 'r1', token_type: 'Bearer', expires_in: 900 })
      }
      if (url.pathname === '/api/v1/auth/me') {
        expect(request.headers.get('authorization')).toBe('Bearer a1')
        return answer(200, me)
      }
      return answer(404, {})
    })
    const auth = useAuthStore()
    const first = await auth.login('alice', 'pw')
    expect(first).toEqual({ done: false, mfaToken: 'm1' })
    expect(auth.signedIn).toBe(false)
    await auth.loginSecondFactor('m1', '123456')
    expect(auth.signedIn).toBe(true)
    expect(auth.can('operator')).toBe(true)
    expect(auth.can('admin')).toBe(false)
    expect(JSON.parse(localStorage.getItem('windflow.session') ?? '{}').refresh).toBe('r1')
  })

  it('renews an expired access token once and retries; a spent refresh token ends the session', async () => {
    localStorage.setItem('windflow.session', JSON.stringify({ access: 'old', refresh: 'r1', expiresAt: Date.now() + 600_000 }))
    let refreshes = 0
    serve(async (request) => {
      const url = new URL(request.url, 'http://x')
      if (url.pathname === '/api/v1/auth/refresh') {
        refreshes += 1
        return refreshes === 1 ? answer(200, { access_token: 'new', refresh_token: 'r2', token_type: 'Bearer', expires_in: 900 }) : answer(401, { error: { code: 'bad_refresh_token', message: 'x' } })
      }
      return request.headers.get('authorization') === 'Bearer new' ? answer(200, me) : answer(401, { error: { code: 'unauthenticated', message: 'expired' } })
    })
    const auth = useAuthStore()
    const [a, b] = await Promise.all([call((headers) => api.GET('/api/v1/auth/me', { headers })), call((headers) => api.GET('/api/v1/auth/me', { headers }))])
    expect([a.username, b.username]).toEqual(['alice', 'alice'])
    expect(refreshes).toBe(1)
    auth.tokens!.access = 'stale'
    await expect(call((headers) => api.GET('/api/v1/auth/me', { headers }))).rejects.toMatchObject({ code: 'unauthenticated', status: 401 })
    expect(auth.signedIn).toBe(false)
  })
})
