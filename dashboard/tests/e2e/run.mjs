// The dashboard in a real browser (Debian's chromium, driven by playwright-core) against a real
// control plane, agent and Docker engine, as a person would use it: sign in, add a server,
// write a stack (and see an error at its line), deploy it, watch it run and its logs, roll it
// back, delete it. Every page is screenshotted and scanned by axe-core; a serious or critical
// accessibility violation fails the run.
//
// Environment (set by tests/tests/dashboard.rs): WINDFLOW_URL, WINDFLOW_PASSWORD, WINDFLOW_IMAGE
// (a local busybox image), WINDFLOW_TARGET (the connected agent's name), WINDFLOW_RESULTS.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { chromium } from 'playwright-core'

const require = createRequire(import.meta.url)
const url = process.env.WINDFLOW_URL
const password = process.env.WINDFLOW_PASSWORD
const image = process.env.WINDFLOW_IMAGE
const targetName = process.env.WINDFLOW_TARGET
const modelUrl = process.env.WINDFLOW_MODEL_URL
const results = process.env.WINDFLOW_RESULTS ?? 'test-results'
const stackName = `e2e-${Date.now().toString(36)}`
mkdirSync(results, { recursive: true })

const stackYaml = (line) => `services:
  worker:
    image: ${image}
    command: ["sh", "-c", "while true; do echo '${line}'; sleep 1; done"]
    stop_grace_period: 1s
`

const step = (text) => console.log(`· ${text}`)
// Evaluated through the debugging protocol: the page's own CSP stays on for the app.
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8')
const violations = []

// `within`: a selector to measure only (a dialog over a page that other steps measure).
async function scan(page, name, within) {
  // Let transitions end: a fading-in element is measured at its final colours.
  await page.waitForTimeout(400)
  await page.screenshot({ path: join(results, `${name}.png`), fullPage: true })
  await page.evaluate(axeSource)
  const found = await page.evaluate(async (within) => {
    // Toasts come and go: one leaving is measured half faded. Their steady colours are those of
    // the alerts, which are measured.
    const context = { exclude: [['.el-message']], ...(within ? { include: [[within]] } : {}) }
    const report = await axe.run(context, { resultTypes: ['violations'] })
    return report.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')} ${JSON.stringify(n.any[0]?.data ?? '')}`),
      }))
  }, within)
  for (const v of found) violations.push({ page: name, ...v })
  step(`${name}: screenshot, ${found.length} serious accessibility violation(s)`)
  for (const v of found) console.log(`  ${v.impact} ${v.id}: ${v.help} — ${v.nodes.join(' | ')}`)
}

async function setEditor(page, text) {
  const editor = page.locator('[data-testid=yaml-editor] .cm-content')
  await editor.click()
  await page.keyboard.press('Control+A')
  await page.keyboard.press('Delete')
  await page.keyboard.insertText(text)
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
})
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 900 }, locale: 'en-GB' })
// Nothing outside the machine is reachable: template logos fall back to their initials at once.
await context.route(/^https:\/\/(?!127\.0\.0\.1)/, (route) => route.abort())
const page = await context.newPage()
page.setDefaultTimeout(20_000)
const consoleErrors = []
page.on('pageerror', (error) => consoleErrors.push(String(error)))
if (process.env.DEBUG_E2E) page.on('console', (m) => console.log('console:', m.type(), m.text()))
if (process.env.DEBUG_E2E) page.on('response', (r) => r.url().includes('/api/') && console.log('resp', r.status(), r.url()))
const failedRequests = []
page.on('requestfailed', (r) => failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`))
page.on('response', (r) => r.status() >= 400 && !r.url().includes('/api/') && failedRequests.push(`${r.url()}: ${r.status()}`))
page.on('console', (message) => {
  if (message.type() === 'error' && /Content Security Policy|Refused to/.test(message.text())) consoleErrors.push(message.text())
})

try {
  step('sign in')
  await page.goto(`${url}/deployments`)
  await page.waitForURL((u) => u.pathname === '/login')
  await scan(page, 'login')
  await page.fill('#wf-username', 'admin')
  await page.fill('#wf-password', 'not the password')
  await page.click('button[type=submit]')
  await page.getByRole('alert').getByText('Wrong user name or password').waitFor()
  await page.fill('#wf-password', password)
  await page.click('button[type=submit]')
  await page.waitForURL((u) => u.pathname === '/deployments')

  step('overview')
  await page.goto(`${url}/`)
  await page.getByText('Targets connected').waitFor()
  await scan(page, 'overview')

  step('add a server and see its one-liner')
  await page.goto(`${url}/targets`)
  await page.getByRole('link', { name: targetName }).waitFor()
  await scan(page, 'targets')
  await page.getByRole('button', { name: 'Add a server' }).click()
  await page.fill('#wf-token-labels', 'env=e2e')
  await page.getByRole('button', { name: 'Make the command' }).click()
  const command = await page.getByRole('textbox', { name: 'Install command' }).inputValue()
  if (!command.includes('--pinnedpubkey') || !command.includes('WINDFLOW_JOIN_TOKEN=')) throw new Error(`not a one-liner: ${command}`)
  await page.getByText(/Valid until/).waitFor()
  await scan(page, 'add-server')
  await page.locator('[data-testid=add-where]').getByText('A Kubernetes cluster').click()
  const clusterCommand = await page.getByRole('textbox', { name: 'Cluster install command' }).inputValue()
  if (!clusterCommand.includes('/kubernetes/agent.yaml') || !clusterCommand.endsWith('| kubectl apply -f -')) {
    throw new Error(`not a cluster one-liner: ${clusterCommand}`)
  }
  await page.getByRole('button', { name: 'Close', exact: true }).click()

  step('add many servers from a CSV file, and group the targets by a label')
  await page.getByRole('button', { name: 'Add many' }).click()
  await page.locator('input[type=file]').setInputFiles({
    name: 'servers.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from('name,labels\nweb-01,env=prod; group=web\ndb-01,env=prod\n'),
  })
  await page.getByRole('cell', { name: 'web-01' }).waitFor()
  await page.getByRole('button', { name: 'Make 2 commands' }).click()
  await page.locator('code', { hasText: 'WINDFLOW_JOIN_TOKEN=' }).nth(1).waitFor()
  const download = page.waitForEvent('download')
  await page.getByRole('button', { name: 'Download the commands (CSV)' }).click()
  const csv = readFileSync(await (await download).path(), 'utf8')
  if (!csv.startsWith('name,labels,expires_at,command') || csv.split('\n').filter(Boolean).length !== 3) throw new Error(`download: ${csv}`)
  await scan(page, 'bulk-onboarding')
  await page.getByRole('dialog', { name: 'Add many servers' }).getByRole('button', { name: 'Close', exact: true }).click()

  step('a target in detail')
  await page.getByRole('link', { name: targetName }).click()
  await page.getByText('Connection history').waitFor()
  await page.locator('[data-testid=target-platforms] li.on', { hasText: 'Docker' }).waitFor()
  await page.locator('[data-testid=target-platforms] li.off', { hasText: 'Kubernetes' }).waitFor()
  await page.getByRole('button', { name: 'Test the connection' }).click()
  await page.getByText(/Round trip: [\d.]+ ms/).waitFor()
  await page.fill('#wf-target-labels', 'env=e2e; group=web')
  await page.getByRole('button', { name: 'Save' }).click()
  await page.getByText('Saved').first().waitFor()
  await scan(page, 'target')
  await page.goto(`${url}/targets`)
  await page.locator('.el-select', { hasText: 'Group by label' }).click()
  await page.getByRole('option', { name: 'env', exact: true }).click()
  await page.getByRole('heading', { name: 'env=e2e (1)' }).waitFor()
  await scan(page, 'targets-grouped')

  step('create a stack from YAML, with an error at its line first')
  await page.goto(`${url}/stacks/new`)
  await page.fill('input[aria-label=Name]', stackName)
  await setEditor(page, `${stackYaml('first version')}    ports: ["8080:80"\n`)
  await page.locator('.wf-findings .error').getByText(/Line 7, column 1/).waitFor()
  await page.getByText('1 error(s)').waitFor()
  await scan(page, 'stack-error')
  await setEditor(page, stackYaml('first version'))
  await page.getByText('Valid', { exact: true }).waitFor()
  await page.getByRole('button', { name: 'Create the stack' }).click()
  await page.getByText('Saved as version 1.').waitFor()
  await page.waitForURL(/\/stacks\/[0-9a-f-]{36}$/)

  step('save version 2 and compare it with version 1')
  await setEditor(page, stackYaml('hello from the worker v2'))
  await page.getByText('Valid', { exact: true }).waitFor()
  await page.getByRole('button', { name: 'Save a new version' }).click()
  await page.getByText('Saved as version 2.').waitFor()
  await page.getByRole('tab', { name: 'Versions' }).click()
  await page.locator('td.gone', { hasText: 'first version' }).waitFor()
  await page.locator('td.new', { hasText: 'hello from the worker v2' }).waitFor()
  await scan(page, 'stack-versions')

  step('what it becomes on Swarm')
  await page.getByRole('tab', { name: 'On Swarm' }).click()
  await page.getByText('Nothing stands in the way of running it on Swarm.').waitFor()
  await page.locator('[data-testid=swarm-yaml]', { hasText: '_worker' }).waitFor()
  await scan(page, 'stack-swarm')
  step('what it becomes on Kubernetes')
  await page.getByRole('tab', { name: 'On Kubernetes' }).click()
  await page.locator('[data-testid=kubernetes-yaml]', { hasText: 'kind: Deployment' }).waitFor()
  await scan(page, 'stack-kubernetes')
  await page.getByRole('tab', { name: 'On libvirt' }).click()
  await page.locator('[data-testid=libvirt-finding]', { hasText: 'Refused on libvirt: x-vms' }).waitFor()

  step('what the rule analyser finds in it')
  await page.getByRole('tab', { name: 'Analysis' }).click()
  await page.locator('[data-testid=stack-analysis]', { hasText: 'has no memory limit' }).waitFor()
  await scan(page, 'stack-analysis')

  step('deploy it, watch it run and read its logs')
  await page.getByRole('button', { name: 'Deploy', exact: true }).click()
  const dialog = page.getByRole('dialog', { name: `Deploy ${stackName}` })
  await dialog.locator('.el-select').click()
  await page.getByRole('option', { name: new RegExp(targetName) }).click()
  await dialog.getByText(new RegExp(targetName)).waitFor()
  await page.screenshot({ path: join(results, 'deploy-dialog.png') })
  await dialog.getByRole('button', { name: 'Deploy', exact: true }).click()
  await page.waitForURL(/\/deployments\/[0-9a-f-]{36}$/)
  await page.locator('[data-testid=deployment-state]', { hasText: 'Running' }).waitFor({ timeout: 90_000 })
  await page.locator('[data-testid=log-lines]', { hasText: 'hello from the worker v2' }).waitFor({ timeout: 30_000 })
  await scan(page, 'deployment')

  step('diagnose it: the rules answer without a model')
  await page.locator('[data-testid=open-diagnosis]').click()
  await page.getByText('From the diagnosis rules').waitFor()
  await page.locator('[data-testid=diagnosis-cause]').waitFor()
  await scan(page, 'diagnosis')
  await page.getByRole('dialog', { name: 'Diagnosis' }).getByRole('button', { name: 'Close', exact: true }).click()

  step('right-size it from what its containers use')
  await page.locator('[data-testid=open-optimize]').click()
  await page.getByText('Memory at its peak').first().waitFor({ timeout: 30_000 })
  await page.getByText('Proposed change').waitFor()
  await scan(page, 'optimization')
  await page.getByRole('dialog', { name: 'Limits from what it uses' }).getByRole('button', { name: 'Close', exact: true }).click()

  step('roll back to version 1')
  await page.getByRole('button', { name: 'Roll back' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Roll back' }).click()
  await page.getByText('Wanted: version 1').waitFor()
  await page.getByText('running: version 1').waitFor({ timeout: 90_000 })
  await page.locator('[data-testid=log-lines]', { hasText: 'first version' }).waitFor({ timeout: 30_000 })

  step('scale the worker to two replicas')
  await page.locator('[data-testid=deployment-platform]', { hasText: 'Docker containers' }).waitFor()
  await page.getByRole('button', { name: 'Scale worker' }).click()
  await page.fill('#wf-scale-replicas', '2')
  await page.keyboard.press('Tab')
  await page.locator('[data-testid=scale-confirm]').click()
  await page.getByText('worker: 2 replica(s) asked.').waitFor()
  await page.getByRole('cell', { name: /^2 \/ 2/ }).waitFor({ timeout: 90_000 })

  step('the deployments list')
  await page.goto(`${url}/deployments`)
  await page.getByRole('link', { name: stackName }).waitFor()
  await scan(page, 'deployments')

  step('delete the deployment')
  await page.getByRole('link', { name: stackName }).click()
  await page.getByRole('button', { name: 'Delete' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
  await page.locator('[data-testid=deployment-state]', { hasText: 'Removed' }).waitFor({ timeout: 60_000 })

  step('roll the stack out to its targets as one operation, then remove it')
  await page.goto(`${url}/stacks`)
  await page.getByRole('link', { name: stackName, exact: true }).click()
  await page.locator('[data-testid=rollout-open]').click()
  const rollout = page.getByRole('dialog', { name: `Roll ${stackName} out to several targets` })
  await rollout.locator('.el-select').click()
  await page.getByRole('option', { name: new RegExp(targetName) }).click()
  await page.keyboard.press('Escape')
  await rollout.locator('[data-testid=rollout-start]').click()
  await rollout.getByText('Done: every target runs the version.').waitFor({ timeout: 90_000 })
  await scan(page, 'rollout', '[data-testid=rollout-progress]')
  await rollout.getByRole('link', { name: targetName }).click()
  await page.waitForURL(/\/deployments\/[0-9a-f-]{36}$/)
  await page.locator('[data-testid=deployment-state]', { hasText: 'Running' }).waitFor()
  await page.getByRole('button', { name: 'Delete' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
  await page.locator('[data-testid=deployment-state]', { hasText: 'Removed' }).waitFor({ timeout: 60_000 })

  step('virtual machines on the host\'s hypervisor: deploy, shut one down, start it, remove')
  const vmStack = `${stackName}-vms`
  await page.goto(`${url}/stacks/new`)
  await page.fill('input[aria-label=Name]', vmStack)
  await setEditor(page, 'services: {}\nx-vms:\n  web:\n    template: debian-12\n    memory: 1g\n  db:\n    template: debian-12\n')
  await page.getByText('Valid', { exact: true }).waitFor()
  await page.getByRole('button', { name: 'Create the stack' }).click()
  await page.getByText('Saved as version 1.').waitFor()
  await page.getByRole('tab', { name: 'On libvirt' }).click()
  await page.locator('[data-testid=libvirt-yaml]', { hasText: `<name>${vmStack}-web</name>` }).waitFor()
  await scan(page, 'stack-libvirt')
  await page.getByRole('button', { name: 'Deploy', exact: true }).click()
  const vmDialog = page.getByRole('dialog', { name: `Deploy ${vmStack}` })
  await vmDialog.locator('.el-select').click()
  await page.getByRole('option', { name: new RegExp(targetName) }).click()
  await vmDialog.getByRole('button', { name: 'Deploy', exact: true }).click()
  await page.waitForURL(/\/deployments\/[0-9a-f-]{36}$/)
  await page.locator('[data-testid=deployment-state]', { hasText: 'Running' }).waitFor({ timeout: 60_000 })
  await page.locator('[data-testid=deployment-platform]', { hasText: 'Virtual machines' }).waitFor()
  await page.getByRole('button', { name: 'Power actions for db' }).click()
  await page.getByRole('menuitem', { name: 'Shut down' }).click()
  await page.getByText('db: Shut down done.').waitFor()
  await page.getByRole('row', { name: /db/ }).getByText('shut off').waitFor()
  await scan(page, 'deployment-vms')
  await page.getByRole('button', { name: 'Power actions for db' }).click()
  await page.getByRole('menuitem', { name: 'Start' }).click()
  await page.getByText('db: Start done.').waitFor()
  await page.getByRole('button', { name: 'Delete' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
  await page.locator('[data-testid=deployment-state]', { hasText: 'Removed' }).waitFor({ timeout: 60_000 })

  step('a stack becomes a private template, which is deleted again')
  await page.goto(`${url}/stacks`)
  await page.getByRole('link', { name: stackName, exact: true }).click()
  await page.getByRole('button', { name: 'Save as template' }).click()
  const about = page.getByRole('dialog', { name: `Save ${stackName} as a template` })
  await about.locator('#wf-tpl-description').fill('The end-to-end test stack.')
  await about.getByRole('button', { name: 'Save' }).click()
  await page.waitForURL(/\/marketplace\/[0-9a-f-]{36}$/)
  await page.getByText('Your organisation').waitFor()
  await page.getByText('The end-to-end test stack.').waitFor()
  await page.getByRole('button', { name: 'Delete' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
  await page.waitForURL((u) => u.pathname === '/marketplace')

  step('the marketplace: search, open WordPress, review it, fill its form, deploy it')
  await page.goto(`${url}/marketplace`)
  await page.locator('a[data-slug=nextcloud]').waitFor()
  await scan(page, 'marketplace')
  await page.getByRole('textbox', { name: 'Search templates' }).fill('wordpress')
  await page.locator('a[data-slug=nextcloud]').waitFor({ state: 'detached' })
  await page.locator('a[data-slug=wordpress]').click()
  await page.waitForURL(/\/marketplace\/wordpress$/)
  await page.getByText("The world's most used CMS").waitFor()
  await page.getByRole('cell', { name: /Database password/ }).waitFor()
  await scan(page, 'template')
  await page.getByRole('tab', { name: /Reviews/ }).click()
  await page.locator('[data-testid=my-review] .el-rate__item').nth(3).click()
  await page.fill('#wf-review-text', 'Up in one click.')
  await page.getByRole('button', { name: 'Publish' }).click()
  await page.getByRole('button', { name: 'Update my review' }).waitFor()
  await page.getByText('Up in one click.').waitFor()
  await page.locator('[data-testid=template-open-deploy]').click()
  const form = page.getByRole('dialog', { name: 'Deploy WordPress + MySQL' })
  await form.locator('.el-select').first().click()
  await page.getByRole('option', { name: new RegExp(targetName) }).click()
  await form.locator('#wf-var-HTTP_PORT').fill('99999')
  await form.getByText('A port is 1 to 65535.').waitFor()
  await form.locator('#wf-var-HTTP_PORT').fill(String(20_000 + Math.floor(Math.random() * 20_000)))
  await form.getByText('Left empty, a strong password is generated and kept as a secret.').first().waitFor()
  await form.locator('#wf-template-stack').fill(`${stackName}-wp`)
  await scan(page, 'template-deploy')
  await form.locator('[data-testid=template-deploy]').click()
  await page.waitForURL(/\/deployments\/[0-9a-f-]{36}$/)
  await page.getByRole('heading', { name: new RegExp(`^${stackName}-wp → ${targetName}`) }).waitFor()
  // No registry is reachable here: the images cannot be pulled, so it goes no further than
  // trying. It is deleted again.
  await page.getByRole('button', { name: 'Delete' }).click()
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
  await page.locator('[data-testid=deployment-state]', { hasText: 'Removed' }).waitFor({ timeout: 90_000 })

  step('a workflow: drag three nodes, connect them, save, run it, and every node succeeds')
  await page.goto(`${url}/workflows/new`)
  await page.getByRole('textbox', { name: 'Name', exact: true }).fill(`${stackName}-flow`)
  const canvas = page.locator('[data-testid=workflow-canvas]')
  await page.locator('.vue-flow__node[data-id=start]').waitFor()
  await page.locator('.wf-palette-item[data-type=wait]').dragTo(canvas, { targetPosition: { x: 40, y: 40 } })
  await page.locator('.vue-flow__node[data-id=wait]').waitFor()
  await page.locator('#wf-node-seconds').fill('1')
  await page.locator('.wf-palette-item[data-type=transform]').dragTo(canvas, { targetPosition: { x: 60, y: 390 } })
  await page.locator('.vue-flow__node[data-id=transform]').waitFor()
  await page.locator('#wf-node-filter').fill('{waited: true}')
  // No trigger leads to them yet: the check says so on the nodes.
  await page.locator('.vue-flow__node[data-id=wait] .wf-node.has-problems').waitFor()
  const handle = (node, port) => page.locator(`.vue-flow__node[data-id=${node}] .vue-flow__handle[data-handleid=${port}]`)
  // A port is joined by pressing on it and letting go over the other node's input.
  const wire = async (from, to) => {
    const a = await from.boundingBox()
    const b = await to.boundingBox()
    await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2)
    await page.mouse.down()
    await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2, { steps: 12 })
    await page.mouse.up()
  }
  await wire(handle('start', 'out'), handle('wait', 'in'))
  await wire(handle('wait', 'out'), handle('transform', 'in'))
  await page.locator('.vue-flow__edge').nth(1).waitFor()
  await page.waitForFunction(() => !document.querySelector('.wf-node.has-problems'))
  await scan(page, 'workflow-editor')
  await page.getByRole('button', { name: 'Save', exact: true }).click()
  await page.getByText('Saved as version 1.').waitFor()
  await page.waitForURL(/\/workflows\/[0-9a-f-]{36}$/)
  await page.locator('[data-testid=workflow-run]').click()
  for (const node of ['start', 'wait', 'transform']) {
    await page.locator(`.vue-flow__node[data-id=${node}] .wf-node[data-status=succeeded]`).waitFor({ timeout: 30_000 })
  }
  await page.locator('[data-testid=run-status]', { hasText: 'Succeeded' }).waitFor()
  await page.locator('.vue-flow__node[data-id=transform]').click()
  await page.locator('[data-testid=step-output]', { hasText: '"waited": true' }).waitFor()
  await page.screenshot({ path: join(results, 'workflow-run.png') })
  await scan(page, 'workflow-run')

  step('the other pages')
  await page.goto(`${url}/stacks`)
  await page.getByRole('link', { name: stackName, exact: true }).waitFor()
  await scan(page, 'stacks')
  await page.goto(`${url}/audit`)
  await page.getByText('Verify the chain').waitFor()
  await page.getByRole('button', { name: 'Verify the chain' }).click()
  await page.getByText(/Intact: \d+ entries/).waitFor()
  await scan(page, 'audit')
  await page.goto(`${url}/settings`)
  await page.getByRole('button', { name: 'Set up an authenticator app' }).waitFor()
  await scan(page, 'settings')
  await page.getByRole('tab', { name: 'Organisation' }).click()
  await page.getByText('Single sign-on (OpenID Connect)').waitFor()
  await scan(page, 'settings-organisation')

  step('the organisation\'s language model: set it, test it')
  await page.getByRole('tab', { name: 'AI' }).click()
  await page.getByRole('radio', { name: 'Ollama' }).click({ force: true })
  await page.locator('input[data-testid=ai-base-url], [data-testid=ai-base-url] input').fill(modelUrl)
  await page.locator('input[data-testid=ai-model], [data-testid=ai-model] input').fill('e2e-model')
  await page.locator('[data-testid=ai-save]').click()
  await page.locator('[data-testid=ai-test]').click()
  await page.locator('[data-testid=ai-test-result]', { hasText: 'The model answered “OK”' }).waitFor()
  await page.getByText('Tokens by month').waitFor()
  await page.getByRole('img', { name: 'Tokens by month' }).waitFor()
  await scan(page, 'settings-ai')

  step('write a stack with AI: a refused attempt, then a file to review')
  await page.goto(`${url}/stacks/new`)
  await page.locator('[data-testid=open-generate]').click()
  await page.locator('textarea[data-testid=ai-description], [data-testid=ai-description] textarea').fill('nginx serving a static site')
  await page.locator('[data-testid=ai-generate]').click()
  await page.getByText('Attempt 2').waitFor()
  await page.locator('.wf-refused').first().waitFor()
  await page.getByText('Random values are made for its secrets: ADMIN_PASSWORD.').waitFor()
  await scan(page, 'generate')
  await page.locator('[data-testid=ai-accept]').click()
  await page.locator('.cm-content[aria-label="Compose file"]', { hasText: 'nginx:1.27' }).waitFor()
  await page.getByText('Valid', { exact: true }).waitFor()

  step('in French, on a phone')
  await page.setViewportSize({ width: 390, height: 844 })
  await page.goto(`${url}/`)
  await page.locator('.wf-lang').click()
  await page.getByRole('option', { name: 'Français' }).click()
  await page.getByText('Cibles connectées').waitFor()
  await scan(page, 'overview-fr-phone')

  if (consoleErrors.length) throw new Error(`errors in the page: ${consoleErrors.join('; ')}`)
  if (violations.length) {
    writeFileSync(join(results, 'axe.json'), JSON.stringify(violations, null, 2))
    throw new Error(`accessibility: ${violations.length} serious violation(s):\n${JSON.stringify(violations, null, 2)}`)
  }
  console.log('the dashboard passed')
} catch (error) {
  const messages = await page.locator('.el-message').allInnerTexts().catch(() => [])
  console.error(`messages on the page: ${JSON.stringify(messages)}; failed requests: ${JSON.stringify(failedRequests)}`)
  await page.screenshot({ path: join(results, 'failure.png'), fullPage: true }).catch(() => {})
  console.error(error)
  process.exitCode = 1
} finally {
  await browser.close()
}
