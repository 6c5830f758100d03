// The signed-in session: tokens (kept across reloads), who the user is, the organisation they
// act in, and sign-in in one or two steps (password, then a code) or by single sign-on. The
// access token is renewed before it expires and again on any 401.
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api, ApiError, call, useSession, type Schemas } from '@/api/client'

const STORAGE_KEY = 'windflow.session'
const ORG_KEY = 'windflow.org'

interface Stored {
  access: string
  refresh: string
  /** Unix ms when the access token expires. */
  expiresAt: number
}

export type SignIn = { done: true } | { done: false; mfaToken: string }

function load(): Stored | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY)
    return raw ? (JSON.parse(raw) as Stored) : null
  } catch {
    return null
  }
}

export const useAuthStore = defineStore('auth', () => {
  const tokens = ref<Stored | null>(load())
  const me = ref<Schemas['Me'] | null>(null)
  const orgId = ref<string | null>(localStorage.getItem(ORG_KEY))
  let renewTimer: ReturnType<typeof setTimeout> | undefined
  let renewing: Promise<boolean> | null = null

  const signedIn = computed(() => tokens.value !== null)
  const role = computed(() => me.value?.org?.role ?? null)
  const rank = { viewer: 0, operator: 1, admin: 2, owner: 3 } as const
  /** Whether the caller's role here is at least `needed`. */
  const can = (needed: keyof typeof rank) => role.value !== null && rank[role.value] >= rank[needed]

  function keep(answer: Schemas['TokensResponse']) {
    tokens.value = {
      access: answer.access_token,
      refresh: answer.refresh_token,
      expiresAt: Date.now() + answer.expires_in * 1000,
    }
    localStorage.setItem(STORAGE_KEY, JSON.stringify(tokens.value))
    scheduleRenewal()
  }

  function forget() {
    tokens.value = null
    me.value = null
    localStorage.removeItem(STORAGE_KEY)
    clearTimeout(renewTimer)
  }

  function scheduleRenewal() {
    clearTimeout(renewTimer)
    if (!tokens.value) return
    const inMs = Math.max(5_000, tokens.value.expiresAt - Date.now() - 60_000)
    renewTimer = setTimeout(() => void renew(), inMs)
  }

  /** Trades the refresh token for new tokens, once at a time; false when the session is over. */
  function renew(): Promise<boolean> {
    if (renewing) return renewing
    const refresh = tokens.value?.refresh
    if (!refresh) return Promise.resolve(false)
    renewing = (async () => {
      const { data, response } = await api.POST('/api/v1/auth/refresh', { body: { refresh_token: refresh } })
      if (!response.ok || !data) {
        forget()
        return false
      }
      keep(data)
      return true
    })().finally(() => {
      renewing = null
    })
    return renewing
  }

  useSession({
    headers: () => {
      const headers: Record<string, string> = {}
      if (tokens.value) headers.Authorization = `Bearer ${tokens.value.access}`
      if (orgId.value) headers['X-WindFlow-Org'] = orgId.value
      return headers
    },
    renew,
  })
  scheduleRenewal()

  async function loadMe() {
    try {
      me.value = await call((headers) => api.GET('/api/v1/auth/me', { headers }))
    } catch (error) {
      // The organisation remembered here may be gone or no longer ours: fall back to the default.
      if (error instanceof ApiError && error.status === 404 && orgId.value) {
        selectOrg(null)
        me.value = await call((headers) => api.GET('/api/v1/auth/me', { headers }))
      } else {
        throw error
      }
    }
    return me.value
  }

  /** The first step: the password. Accounts with two-factor authentication need a second. */
  async function login(username: string, password: string): Promise<SignIn> {
    const { data, error, response } = await api.POST('/api/v1/auth/login', { body: { username, password } })
    if (data) {
      keep(data)
      await loadMe()
      return { done: true }
    }
    const detail = (error as { error?: Schemas['ErrorDetail'] } | undefined)?.error
    const mfaToken = (detail?.details as { mfa_token?: string } | undefined)?.mfa_token
    if (detail?.code === 'second_factor_required' && mfaToken) return { done: false, mfaToken }
    throw new ApiError(response.status, detail)
  }

  async function loginSecondFactor(mfaToken: string, code: string) {
    keep(await call(() => api.POST('/api/v1/auth/login/totp', { body: { mfa_token: mfaToken, code } })))
    await loadMe()
  }

  /** Finishes single sign-on with the code the callback put in the URL's fragment. */
  async function exchangeSso(code: string) {
    keep(await call(() => api.POST('/api/v1/auth/sso/exchange', { body: { code } })))
    await loadMe()
  }

  async function logout() {
    try {
      await call((headers) => api.POST('/api/v1/auth/logout', { headers }))
    } catch {
      // Signed out here either way.
    }
    forget()
  }

  function selectOrg(id: string | null) {
    orgId.value = id
    if (id) localStorage.setItem(ORG_KEY, id)
    else localStorage.removeItem(ORG_KEY)
  }

  return { tokens, me, orgId, signedIn, role, can, login, loginSecondFactor, exchangeSso, logout, loadMe, renew, selectOrg, forget }
})
