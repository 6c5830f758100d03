import { describe, expect, it } from 'vitest'
import { parseCsv, serverRows, toCsv } from '@/utils/csv'
import { lineOfPath, parsePath } from '@/utils/yamlPath'
import { LogBuffer } from '@/utils/logBuffer'
import { ago, bytes, labelList, parseLabels, randomSecret, stateType } from '@/utils/format'
import { parseEvents } from '@/api/sse'
import { initialValue, refuse, valuesToSend, type Variable } from '@/utils/templateVariables'
import { freshId, ports, refuseConnection, toCanvas, toGraph } from '@/utils/workflowNodes'

describe('CSV for bulk onboarding', () => {
  it('reads quoted fields, blank lines and both line endings', () => {
    expect(parseCsv('a,"b, c","say ""hi"""\r\n\nd,e\n')).toEqual([
      ['a', 'b, c', 'say "hi"'],
      ['d', 'e'],
    ])
  })
  it('skips a header row and numbers the servers by their line', () => {
    expect(serverRows('name,labels\nweb-1,env=prod; group=web\ndb-1\n')).toEqual([
      { line: 2, name: 'web-1', labels: 'env=prod; group=web' },
      { line: 3, name: 'db-1', labels: '' },
    ])
  })
  it('quotes what needs it on the way out', () => {
    expect(toCsv([['a', 'b,c', 'd"e']])).toBe('a,"b,c","d""e"\n')
  })
})

describe('finding a Compose path in YAML', () => {
  const yaml = ['services:', '  web:', '    image: nginx', '    ports:', '      - "80:80"', '      - "443:443"', '  db:', '    image: postgres', 'volumes:', '  data: {}'].join('\n')
  it('splits paths into keys and indices', () => {
    expect(parsePath('services.web.ports[1]')).toEqual(['services', 'web', 'ports', 1])
  })
  it('points at the key, the list item, or the deepest part found', () => {
    expect(lineOfPath(yaml, 'services.web.image')).toBe(3)
    expect(lineOfPath(yaml, 'services.web.ports[1]')).toBe(6)
    expect(lineOfPath(yaml, 'services.db.image')).toBe(8)
    expect(lineOfPath(yaml, 'volumes.data')).toBe(10)
    expect(lineOfPath(yaml, 'services.db.healthcheck')).toBe(7)
    expect(lineOfPath(yaml, 'nothing.here')).toBe(1)
  })
})

describe('the log buffer behind the virtual list', () => {
  const line = (n: number, service = 'web') => ({ service, container: 'c', stream: 'stdout', line: `line ${n}` })
  it('keeps a bound, searching and windowing over 100,000 lines', () => {
    const buffer = new LogBuffer(100_000)
    buffer.push(Array.from({ length: 120_000 }, (_, i) => line(i, i % 2 ? 'web' : 'worker')))
    expect(buffer.size).toBe(100_000)
    expect(buffer.dropped).toBe(20_000)
    expect(buffer.at(0)?.line).toBe('line 20000')
    const [first, last] = buffer.window(20 * 500, 480, 20)
    expect([first, last]).toEqual([480, 544])
    buffer.search('LINE 11999')
    expect(buffer.visible).toBe(10)
    expect(buffer.at(0)?.line).toBe('line 119990')
    buffer.push([line(1), { ...line(2), line: 'line 119999x' }])
    expect(buffer.visible).toBe(11)
    buffer.search('')
    expect(buffer.visible).toBe(100_000)
  })
  it('writes the download with or without times', () => {
    const buffer = new LogBuffer()
    buffer.push([{ ...line(1), at: '2026-01-01T00:00:00Z' }])
    expect(buffer.text(true)).toBe('2026-01-01T00:00:00Z web | line 1\n')
    expect(buffer.text(false)).toBe('web | line 1\n')
  })
})

describe('formatting', () => {
  it('shows sizes, times, states and labels', () => {
    expect(bytes(1536)).toBe('1.5 KiB')
    expect(bytes(8 * 1024 ** 3)).toBe('8.0 GiB')
    expect(ago('2026-01-01T00:00:00Z', 'en', Date.parse('2026-01-01T00:03:00Z'))).toBe('3 minutes ago')
    expect(stateType('failed')).toBe('danger')
    expect(labelList({ env: 'prod', edge: '' })).toEqual(['env=prod', 'edge'])
    expect(parseLabels('env=prod; group = web, x=a=b')).toEqual({ env: 'prod', group: 'web', x: 'a=b' })
  })
  it('makes random secrets of the asked length, each different', () => {
    const secrets = new Set(Array.from({ length: 50 }, () => randomSecret()))
    expect(secrets.size).toBe(50)
    for (const secret of secrets) expect(secret).toMatch(/^[A-Za-z2-9]{24}$/)
    expect(randomSecret(5)).toHaveLength(5)
  })
})

describe('server-sent events', () => {
  it('parses whole events and keeps the unfinished rest', () => {
    const { events, rest } = parseEvents('event: log\ndata: {"a":1}\nid: 7\n\n: keep-alive\n\ndata: x\ndata: y\n\nevent: lo')
    expect(events).toEqual([
      { event: 'log', data: '{"a":1}', id: '7' },
      { event: 'message', data: 'x\ny' },
    ])
    expect(rest).toBe('event: lo')
  })
})

describe('resuming a log stream', () => {
  const at = (s: number) => `2026-11-25T10:00:${String(s).padStart(2, '0')}.000Z`
  const line = (s: number, text = `l${s}`) => ({ service: 'web', container: 'c1', stream: 'stdout', line: text, at: at(s) })
  it('drops the tail it already has and keeps what is new', async () => {
    const { resync } = await import('@/utils/logBuffer')
    expect(resync(line(3), [line(1), line(2), line(3), line(4)])).toEqual({ fresh: [line(4)], caughtUp: true })
    expect(resync(line(3), [line(1), line(2)])).toEqual({ fresh: [], caughtUp: false })
    expect(resync(line(3), [line(5), line(6)])).toEqual({ fresh: [line(5), line(6)], caughtUp: true })
    expect(resync(undefined, [line(1)])).toEqual({ fresh: [line(1)], caughtUp: true })
  })
})

describe("a template's deploy form", () => {
  const variable = (over: Partial<Variable>): Variable => ({ name: 'X', label: 'X', type: 'string', required: false, secret: false, options: [], ...over })
  it('starts from the default, the first option or false', () => {
    expect(initialValue(variable({ default: '8080', type: 'port' }))).toBe('8080')
    expect(initialValue(variable({ type: 'enum', options: ['a', 'b'] }))).toBe('a')
    expect(initialValue(variable({ type: 'boolean' }))).toBe('false')
    expect(initialValue(variable({ type: 'password' }))).toBe('')
  })
  it('asks for required values, except passwords, which are generated', () => {
    expect(refuse(variable({ required: true, label: 'Site name' }), '')).toEqual({ key: 'isRequired', params: { label: 'Site name' } })
    expect(refuse(variable({ required: true, type: 'password' }), '')).toBeNull()
    expect(refuse(variable({ type: 'password' }), 'short')?.key).toBe('badPassword')
  })
  it('checks each type as the control plane does', () => {
    expect(refuse(variable({ type: 'port' }), '99999')?.key).toBe('badPort')
    expect(refuse(variable({ type: 'port' }), '8080')).toBeNull()
    expect(refuse(variable({ type: 'integer' }), '1.5')?.key).toBe('badInteger')
    expect(refuse(variable({ type: 'url' }), 'ftp://x')?.key).toBe('badUrl')
    expect(refuse(variable({ type: 'email' }), 'me@example')?.key).toBe('badEmail')
    expect(refuse(variable({ type: 'email' }), 'me@example.org')).toBeNull()
  })
  it('matches the whole value against the pattern', () => {
    const lower = variable({ pattern: '[a-z]+' })
    expect(refuse(lower, 'abc')).toBeNull()
    expect(refuse(lower, 'abc1')).toEqual({ key: 'badPattern', params: { pattern: '[a-z]+' } })
  })
  it('sends only what was filled in', () => {
    expect(valuesToSend({ A: '1', B: '' })).toEqual({ A: '1' })
  })
})

describe('the workflow editor', () => {
  const graph = {
    nodes: [
      { id: 'start', type: 'manual', config: {}, position: { x: 0, y: 0 } },
      { id: 'check', type: 'condition', config: { expression: 'true' }, position: { x: 200, y: 0 } },
    ],
    edges: [{ from: 'start', to: 'check' }],
  }
  it('turns a graph into canvas nodes and edges and back', () => {
    const canvas = toCanvas(graph)
    expect(canvas.edges[0]).toMatchObject({ source: 'start', sourceHandle: 'out', target: 'check', targetHandle: 'in' })
    expect(toGraph(canvas.nodes, canvas.edges)).toEqual({
      nodes: graph.nodes,
      edges: [{ from: 'start', port: 'out', to: 'check' }],
    })
  })
  it('gives each node kind its ports, and every action a failure port', () => {
    expect(ports('manual', {})).toEqual(['out'])
    expect(ports('condition', {})).toEqual(['true', 'false', 'failure'])
    expect(ports('switch', { cases: ['a', 'b'] })).toEqual(['a', 'b', 'default', 'failure'])
    expect(ports('approval', {})).toEqual(['approved', 'rejected', 'failure'])
  })
  it('refuses edges into a trigger, to the node itself, or twice', () => {
    const { nodes, edges } = toCanvas(graph)
    expect(refuseConnection({ source: 'check', sourceHandle: 'true', target: 'start' }, nodes, edges)).toBe('intoTrigger')
    expect(refuseConnection({ source: 'check', sourceHandle: 'true', target: 'check' }, nodes, edges)).toBe('self')
    expect(refuseConnection({ source: 'start', sourceHandle: 'out', target: 'check' }, nodes, edges)).toBe('twice')
    expect(refuseConnection({ source: 'check', sourceHandle: 'failure', target: 'check' }, nodes, edges)).toBe('self')
  })
  it('names new nodes after their type', () => {
    expect(freshId('wait', ['start'])).toBe('wait')
    expect(freshId('wait', ['wait', 'wait_2'])).toBe('wait_3')
  })
})
