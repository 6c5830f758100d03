// The workflow editor's catalogue of node types — their group, ports and settings form — and the
// conversions between the API's graph and the canvas's nodes and edges. Pure: tested on its own.

export type FieldKind = 'text' | 'textarea' | 'number' | 'boolean' | 'select' | 'list' | 'map' | 'channel'

export interface Field {
  key: string
  kind: FieldKind
  required?: boolean
  options?: string[]
}

export type Group = 'triggers' | 'actions' | 'logic' | 'integration'

export interface NodeType {
  type: string
  group: Group
  fields: Field[]
  /** The settings a new node starts with. */
  config: () => Record<string, unknown>
}

export const EVENTS = ['deployment_succeeded', 'deployment_failed', 'drift_repaired', 'agent_connected', 'agent_disconnected']

export const NODE_TYPES: NodeType[] = [
  { type: 'manual', group: 'triggers', fields: [], config: () => ({}) },
  { type: 'cron', group: 'triggers', fields: [{ key: 'schedule', kind: 'text', required: true }], config: () => ({ schedule: '0 * * * *' }) },
  { type: 'event', group: 'triggers', fields: [{ key: 'events', kind: 'select', options: EVENTS, required: true }], config: () => ({ events: ['deployment_failed'] }) },
  { type: 'webhook', group: 'triggers', fields: [], config: () => ({}) },
  {
    type: 'deploy',
    group: 'actions',
    fields: [
      { key: 'stack', kind: 'text', required: true },
      { key: 'target', kind: 'text', required: true },
      { key: 'version', kind: 'text' },
      { key: 'platform', kind: 'text' },
    ],
    config: () => ({ stack: '', target: '' }),
  },
  { type: 'rollback', group: 'actions', fields: [{ key: 'deployment', kind: 'text', required: true }, { key: 'version', kind: 'text' }], config: () => ({ deployment: '' }) },
  {
    type: 'scale',
    group: 'actions',
    fields: [
      { key: 'deployment', kind: 'text', required: true },
      { key: 'service', kind: 'text', required: true },
      { key: 'replicas', kind: 'text', required: true },
    ],
    config: () => ({ deployment: '', service: '', replicas: '1' }),
  },
  { type: 'remove', group: 'actions', fields: [{ key: 'deployment', kind: 'text', required: true }, { key: 'volumes', kind: 'boolean' }], config: () => ({ deployment: '', volumes: false }) },
  { type: 'condition', group: 'logic', fields: [{ key: 'expression', kind: 'text', required: true }], config: () => ({ expression: 'true' }) },
  { type: 'switch', group: 'logic', fields: [{ key: 'expression', kind: 'text', required: true }, { key: 'cases', kind: 'list', required: true }], config: () => ({ expression: '', cases: [] }) },
  { type: 'wait', group: 'logic', fields: [{ key: 'seconds', kind: 'number', required: true }], config: () => ({ seconds: 60 }) },
  { type: 'approval', group: 'logic', fields: [{ key: 'message', kind: 'textarea' }], config: () => ({ message: '' }) },
  {
    type: 'http',
    group: 'integration',
    fields: [
      { key: 'method', kind: 'select', options: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'] },
      { key: 'url', kind: 'text', required: true },
      { key: 'headers', kind: 'map' },
      { key: 'body', kind: 'textarea' },
    ],
    config: () => ({ method: 'GET', url: '', headers: {} }),
  },
  { type: 'transform', group: 'integration', fields: [{ key: 'filter', kind: 'text', required: true }, { key: 'input', kind: 'text' }], config: () => ({ filter: '.' }) },
  {
    type: 'notify',
    group: 'integration',
    fields: [{ key: 'channel', kind: 'channel', required: true }, { key: 'title', kind: 'text' }, { key: 'message', kind: 'textarea', required: true }],
    config: () => ({ channel: { kind: 'webhook', url: '' }, title: '', message: '' }),
  },
  {
    type: 'llm',
    group: 'integration',
    fields: [
      { key: 'prompt', kind: 'textarea', required: true },
      { key: 'system', kind: 'textarea' },
    ],
    config: () => ({ prompt: '', system: '' }),
  },
]

export const GROUPS: Group[] = ['triggers', 'actions', 'logic', 'integration']

export function nodeType(type: string): NodeType | undefined {
  return NODE_TYPES.find((t) => t.type === type)
}

export const isTrigger = (type: string) => nodeType(type)?.group === 'triggers'

/** The ports a node leaves by when it succeeds (then `failure`, for all but triggers). */
export function ports(type: string, config: Record<string, unknown>): string[] {
  const own =
    type === 'condition'
      ? ['true', 'false']
      : type === 'switch'
        ? [...((config.cases as string[] | undefined) ?? []), 'default']
        : type === 'approval'
          ? ['approved', 'rejected']
          : ['out']
  return isTrigger(type) ? own : [...own, 'failure']
}

/** A node of the API's graph. */
export interface GraphNode {
  id: string
  name?: string
  type: string
  config: Record<string, unknown>
  position?: { x: number; y: number }
  retry?: { attempts: number; backoff_ms?: number; max_backoff_ms?: number }
  timeout_seconds?: number
}

export interface GraphEdge {
  from: string
  port?: string
  to: string
}

export interface Graph {
  nodes: GraphNode[]
  edges: GraphEdge[]
}

/** What the canvas holds of a node. */
export interface NodeData {
  type: string
  name: string
  config: Record<string, unknown>
  retry?: GraphNode['retry']
  timeout_seconds?: number
  /** The step's status in the run shown, if any. */
  status?: string
  /** Problems the last check found with it. */
  problems?: string[]
}

export interface CanvasNode {
  id: string
  type: 'wf'
  position: { x: number; y: number }
  data: NodeData
}

export interface CanvasEdge {
  id: string
  source: string
  sourceHandle: string
  target: string
  targetHandle: 'in'
  label?: string
}

export const edgeId = (from: string, port: string, to: string) => `${from}.${port}->${to}`

export function toCanvas(graph: Graph): { nodes: CanvasNode[]; edges: CanvasEdge[] } {
  const nodes = graph.nodes.map((n, i) => ({
    id: n.id,
    type: 'wf' as const,
    position: n.position ?? { x: 80 + 260 * i, y: 120 },
    data: { type: n.type, name: n.name ?? '', config: n.config ?? {}, retry: n.retry, timeout_seconds: n.timeout_seconds },
  }))
  const edges = graph.edges.map((e) => {
    const port = e.port ?? 'out'
    return { id: edgeId(e.from, port, e.to), source: e.from, sourceHandle: port, target: e.to, targetHandle: 'in' as const, ...(port === 'out' ? {} : { label: port }) }
  })
  return { nodes, edges }
}

export function toGraph(nodes: CanvasNode[], edges: CanvasEdge[]): Graph {
  return {
    nodes: nodes.map((n) => ({
      id: n.id,
      ...(n.data.name ? { name: n.data.name } : {}),
      type: n.data.type,
      config: n.data.config,
      position: { x: Math.round(n.position.x), y: Math.round(n.position.y) },
      ...(n.data.retry ? { retry: n.data.retry } : {}),
      ...(n.data.timeout_seconds ? { timeout_seconds: n.data.timeout_seconds } : {}),
    })),
    edges: edges.map((e) => ({ from: e.source, port: e.sourceHandle || 'out', to: e.target })),
  }
}

/** A fresh node id for a type: `deploy`, then `deploy_2`, `deploy_3`… */
export function freshId(type: string, taken: string[]): string {
  if (!taken.includes(type)) return type
  for (let n = 2; ; n++) if (!taken.includes(`${type}_${n}`)) return `${type}_${n}`
}

/**
 * Why the canvas refuses a connection, or null: nothing leads into a trigger, a node does not
 * lead to itself, and two edges do not join the same port to the same node.
 */
export function refuseConnection(
  connection: { source: string; sourceHandle?: string | null; target: string },
  nodes: CanvasNode[],
  edges: CanvasEdge[],
): string | null {
  const target = nodes.find((n) => n.id === connection.target)
  if (!target) return 'unknown'
  if (connection.source === connection.target) return 'self'
  if (isTrigger(target.data.type)) return 'intoTrigger'
  const port = connection.sourceHandle || 'out'
  if (edges.some((e) => e.source === connection.source && (e.sourceHandle || 'out') === port && e.target === connection.target)) return 'twice'
  return null
}
