import { describe, expect, it } from 'vitest'
import en from '@/i18n/en'
import fr from '@/i18n/fr'

/** Every message as [path, text]; keys may hold dots themselves (`changes.agent.connected`). */
function messages(tree: object, prefix: string[] = []): [string[], string][] {
  return Object.entries(tree).flatMap(([key, value]): [string[], string][] =>
    typeof value === 'object' && value !== null ? messages(value, [...prefix, key]) : [[[...prefix, key], String(value)]],
  )
}

const paths = (tree: object) => messages(tree).map(([path]) => JSON.stringify(path)).sort()

describe('translations', () => {
  it('French has every English key and no other', () => {
    expect(paths(fr)).toEqual(paths(en))
  })
  it('no message uses a character vue-i18n would read as syntax', () => {
    for (const [path, text] of [...messages(en), ...messages(fr)]) {
      expect(text, path.join('.')).not.toMatch(/[@|$]/)
      expect(text.trim(), path.join('.')).not.toBe('')
    }
  })
})
