// The size of what a first visit downloads: the entry script and everything index.html preloads
// with it, gzip-compressed as served. Fails above the budget (300 KB of JavaScript), so that
// pages stay lazily loaded.
import { readFileSync, readdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { join } from 'node:path'

const BUDGET_KB = 300
const dist = new URL('../dist/', import.meta.url).pathname
const html = readFileSync(join(dist, 'index.html'), 'utf8')
const first = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1])
const size = (file) => gzipSync(readFileSync(join(dist, file)), { level: 9 }).length / 1024
const js = first.filter((f) => f.endsWith('.js')).reduce((sum, f) => sum + size(f), 0)
const css = first.filter((f) => f.endsWith('.css')).reduce((sum, f) => sum + size(f), 0)
const all = readdirSync(join(dist, 'assets')).filter((f) => f.endsWith('.js'))
const total = all.reduce((sum, f) => sum + size(join('assets', f)), 0)
console.log(`first load: ${js.toFixed(1)} KB of JavaScript and ${css.toFixed(1)} KB of CSS (gzip), in ${first.length} files`)
console.log(`all pages: ${total.toFixed(1)} KB of JavaScript (gzip) in ${all.length} chunks`)
if (js > BUDGET_KB) {
  console.error(`over the budget: ${js.toFixed(1)} KB > ${BUDGET_KB} KB`)
  process.exit(1)
}
