// First load of the dashboard in Debian's chromium with a cold cache: from navigation to the
// sign-in form being usable (visible, enabled, and typing into it works), and the same for the
// overview after signing in. Prints a Markdown table (medians of RUNS runs) for docs/benchmarks.md.
//
// Environment: WINDFLOW_URL, WINDFLOW_PASSWORD, RUNS (default 10).
import { chromium } from 'playwright-core'

const url = process.env.WINDFLOW_URL
const runs = Number(process.env.RUNS ?? 10)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
})
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const samples = { interactive: [], dcl: [], load: [], bytes: [], overview: [] }

for (let i = 0; i < runs; i++) {
  // A new context has an empty cache and no session: a first visit.
  const context = await browser.newContext({ ignoreHTTPSErrors: true })
  const page = await context.newPage()
  let bytes = 0
  page.on('response', async (r) => {
    const length = Number((await r.allHeaders())['content-length'] ?? 0)
    bytes += length
  })
  const start = Date.now()
  await page.goto(`${url}/login`)
  const field = page.locator('#wf-username')
  await field.waitFor({ state: 'visible' })
  await field.fill('admin')
  samples.interactive.push(Date.now() - start)
  const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON())
  samples.dcl.push(nav.domContentLoadedEventEnd)
  samples.load.push(nav.loadEventEnd)
  await page.fill('#wf-password', process.env.WINDFLOW_PASSWORD)
  const signedIn = Date.now()
  await page.click('button[type=submit]')
  await page.getByText('Targets connected').waitFor()
  samples.overview.push(Date.now() - signedIn)
  samples.bytes.push(bytes)
  await context.close()
}
await browser.close()

console.log(`| first load, cold cache (median of ${runs}) | ms |`)
console.log('|---|---|')
console.log(`| DOMContentLoaded | ${median(samples.dcl).toFixed(0)} |`)
console.log(`| load event | ${median(samples.load).toFixed(0)} |`)
console.log(`| sign-in form interactive (typed into) | ${median(samples.interactive)} |`)
console.log(`| sign in → overview with its data | ${median(samples.overview)} |`)
console.log('')
console.log(`Transferred for the sign-in page and the overview (compressed): ${(median(samples.bytes) / 1024).toFixed(0)} KiB.`)
console.log(`Every run, interactive: ${samples.interactive.join(' ')} ms.`)
