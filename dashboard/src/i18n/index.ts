// English and French; each user's choice is kept on their account (and here for the sign-in page).
import { createI18n } from 'vue-i18n'
import en from './en'
import fr from './fr'

export const LOCALES = ['en', 'fr'] as const
export type Locale = (typeof LOCALES)[number]
const KEY = 'windflow.locale'

function initial(): Locale {
  const saved = localStorage.getItem(KEY)
  if (saved === 'en' || saved === 'fr') return saved
  return navigator.language.toLowerCase().startsWith('fr') ? 'fr' : 'en'
}

export const i18n = createI18n({
  legacy: false,
  locale: initial(),
  fallbackLocale: 'en',
  messages: { en, fr },
})

export function setLocale(locale: Locale) {
  i18n.global.locale.value = locale
  localStorage.setItem(KEY, locale)
  document.documentElement.lang = locale
}
