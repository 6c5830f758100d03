// The marketplace's categories, and a template's variables as a deploy form: the value each field starts with, and why a value is
// refused — the same rules the control plane applies, so most mistakes are shown before sending.
import type { Schemas } from '@/api/client'

export type Variable = Schemas['Variable']

/** The marketplace's categories, in the order the filters list them. */
export const CATEGORIES: Schemas['Category'][] = ['cms', 'database', 'dev-tools', 'monitoring', 'storage', 'communication', 'security', 'automation', 'networking', 'messaging', 'search', 'web-stack']

/** Why a value is refused, as a message key of `template.*` and its parameters; null when fine. */
export type Refusal = { key: string; params?: Record<string, string> } | null

/** The value a field starts with: the default, or empty (a password left empty is generated). */
export function initialValue(variable: Variable): string {
  if (variable.default != null) return variable.default
  if (variable.type === 'boolean') return 'false'
  if (variable.type === 'enum') return variable.options?.[0] ?? ''
  return ''
}

/** Whether an empty field is fine: the server fills generated passwords in. */
function mayBeEmpty(variable: Variable): boolean {
  return variable.type === 'password' || !variable.required
}

export function refuse(variable: Variable, value: string): Refusal {
  if (value === '') return mayBeEmpty(variable) ? null : { key: 'isRequired', params: { label: variable.label } }
  switch (variable.type) {
    case 'port': {
      const port = Number(value)
      if (!/^\d+$/.test(value) || port < 1 || port > 65535) return { key: 'badPort' }
      break
    }
    case 'integer':
      if (!/^[+-]?\d+$/.test(value)) return { key: 'badInteger' }
      break
    case 'url':
      if (!/^https?:\/\/[^\s]+$/.test(value)) return { key: 'badUrl' }
      break
    case 'email': {
      const at = value.indexOf('@')
      const domain = value.slice(at + 1)
      if (at < 1 || !domain.includes('.') || domain.startsWith('.') || value.includes(' ')) return { key: 'badEmail' }
      break
    }
    case 'password':
      if (value.length < 8) return { key: 'badPassword' }
      break
  }
  if (variable.pattern) {
    let matches = true
    try {
      matches = new RegExp(`^(?:${variable.pattern})$`, 'u').test(value)
    } catch {
      // A pattern JavaScript reads differently from the server's: the server decides.
    }
    if (!matches) return { key: 'badPattern', params: { pattern: variable.pattern } }
  }
  return null
}

/** The values to send: empty ones left out, so the server defaults or generates them. */
export function valuesToSend(values: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(values).filter(([, value]) => value !== ''))
}
