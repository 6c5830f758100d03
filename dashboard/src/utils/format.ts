// Small pure helpers for showing API values.

/** A byte count as people read it (1.5 GiB). */
export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return `${value.toFixed(value >= 10 || unit === 0 ? 0 : 1)} ${units[unit]}`
}

/** "3 min ago", in the given locale. */
export function ago(iso: string | null | undefined, locale: string, now = Date.now()): string {
  if (!iso) return '—'
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000)
  const format = new Intl.RelativeTimeFormat(locale, { numeric: 'auto' })
  const steps: [Intl.RelativeTimeFormatUnit, number][] = [
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60],
  ]
  for (const [unit, size] of steps) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit)
  }
  return format.format(seconds, 'second')
}

export type TagType = 'success' | 'warning' | 'danger' | 'info' | 'primary'

/** How a deployment or target state is coloured (always shown with its word, never colour alone). */
export function stateType(state: string | null | undefined): TagType {
  switch (state) {
    case 'running':
    case 'connected':
    case 'healthy':
    case 'succeeded':
      return 'success'
    case 'queued':
    case 'waiting':
    case 'pending':
    case 'deploying':
    case 'removing':
    case 'starting':
    case 'restarting':
      return 'warning'
    case 'failed':
    case 'revoked':
    case 'unhealthy':
    case 'exited':
    case 'dead':
      return 'danger'
    case 'removed':
    case 'disconnected':
    case 'cancelled':
    case 'skipped':
      return 'info'
    default:
      return 'primary'
  }
}

/** One line about a live change, for notifications. */
export function describeChange(change: { kind: string; object: string; detail: string | null }): string {
  return change.detail ? `${change.object.slice(0, 8)} — ${change.detail}` : change.object
}

/** `env=prod, group=web` from a labels object. */
export function labelList(labels: Record<string, string> | undefined): string[] {
  return Object.entries(labels ?? {}).map(([k, v]) => (v ? `${k}=${v}` : k))
}

/** Parses `env=prod; group=web` (or commas) into labels; bad pairs are skipped. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {}
  for (const pair of text.split(/[;,]/)) {
    const [key, ...rest] = pair.split('=')
    const k = key?.trim()
    if (k) labels[k] = rest.join('=').trim()
  }
  return labels
}

/** A random secret for a generated password variable: 24 characters from a URL-safe alphabet. */
export function randomSecret(length = 24): string {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789'
  const bytes = crypto.getRandomValues(new Uint8Array(length))
  // 256 is not a multiple of the alphabet's size; values above the last multiple are drawn again.
  const limit = 256 - (256 % alphabet.length)
  let out = ''
  for (const byte of bytes) {
    if (byte < limit) out += alphabet[byte % alphabet.length]
  }
  return out.length === length ? out : out + randomSecret(length - out.length)
}
