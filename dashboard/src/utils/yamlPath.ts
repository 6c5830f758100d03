// Where in a YAML text a Compose path such as `services.web.ports[1]` is, so that errors the API
// reports by path (not by line) can be shown at their line in the editor.

type Segment = string | number

export function parsePath(path: string): Segment[] {
  const segments: Segment[] = []
  for (const part of path.split('.')) {
    const match = /^([^[\]]*)((?:\[\d+\])*)$/.exec(part)
    if (!match) {
      segments.push(part)
      continue
    }
    if (match[1]) segments.push(match[1])
    for (const index of (match[2] ?? '').matchAll(/\[(\d+)\]/g)) segments.push(Number(index[1]))
  }
  return segments
}

function indentOf(line: string): number {
  return line.length - line.trimStart().length
}

function isContent(line: string): boolean {
  const trimmed = line.trim()
  return trimmed !== '' && !trimmed.startsWith('#')
}

/**
 * The 1-based line that `path` points at in `yaml` (block style as people write Compose files),
 * or the line of the deepest part of it that was found; 1 when nothing was.
 */
export function lineOfPath(yaml: string, path: string): number {
  const lines = yaml.split('\n')
  let found = 0 // index of the line of the last segment found
  let from = 0 // search from this line
  let parentIndent = -1
  let end = lines.length
  for (const segment of parsePath(path)) {
    let hit = -1
    if (typeof segment === 'string') {
      const key = new RegExp(`^\\s*(?:-\\s+)?["']?${segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}["']?\\s*:`)
      for (let i = from; i < end; i++) {
        const line = lines[i] ?? ''
        if (!isContent(line)) continue
        if (indentOf(line) <= parentIndent && i > from) break
        if (key.test(line) && indentOf(line) > parentIndent) {
          hit = i
          break
        }
      }
    } else {
      let seen = -1
      for (let i = from; i < end; i++) {
        const line = lines[i] ?? ''
        if (!isContent(line)) continue
        if (indentOf(line) <= parentIndent && i > from) break
        if (/^\s*-(\s|$)/.test(line) && indentOf(line) > parentIndent) {
          seen += 1
          if (seen === segment) {
            hit = i
            break
          }
        }
      }
    }
    if (hit === -1) break
    found = hit
    parentIndent = indentOf(lines[hit] ?? '')
    from = hit + 1
    // The block ends at the next line indented no deeper than this one.
    end = lines.length
    for (let i = from; i < lines.length; i++) {
      const line = lines[i] ?? ''
      if (isContent(line) && indentOf(line) <= parentIndent && !/^\s*-/.test(line.slice(parentIndent))) {
        end = i
        break
      }
    }
  }
  return found + 1
}
