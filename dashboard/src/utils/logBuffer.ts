// The lines a log view holds, bounded, with what a virtualised list needs: which lines match
// the search, and which rows of those are in view for a scroll position. No DOM here.

export interface LogLine {
  service: string
  container: string
  stream: string
  line: string
  at?: string | null
}

/**
 * After a stream reconnects, the server sends its tail again: `resync` drops what the buffer
 * already has (lines up to and including `last`, by time and text) and answers the rest.
 */
export function resync(last: LogLine | undefined, batch: LogLine[]): { fresh: LogLine[]; caughtUp: boolean } {
  if (!last?.at) return { fresh: batch, caughtUp: true }
  const same = (l: LogLine) => l.at === last.at && l.container === last.container && l.line === last.line
  const seen = batch.findIndex(same)
  if (seen !== -1) return { fresh: batch.slice(seen + 1), caughtUp: true }
  const newer = batch.findIndex((l) => (l.at ?? '') > (last.at ?? ''))
  return newer === -1 ? { fresh: [], caughtUp: false } : { fresh: batch.slice(newer), caughtUp: true }
}

export class LogBuffer {
  private lines: LogLine[] = []
  private matching: number[] | null = null
  private needle = ''
  /** Lines dropped from the front to stay within the bound. */
  dropped = 0

  constructor(readonly limit = 200_000) {}

  get size(): number {
    return this.lines.length
  }

  /** The newest line held. */
  get last(): LogLine | undefined {
    return this.lines[this.lines.length - 1]
  }

  /** How many lines the current search lets through. */
  get visible(): number {
    return this.matching ? this.matching.length : this.lines.length
  }

  push(batch: LogLine[]): void {
    const start = this.lines.length
    for (const line of batch) this.lines.push(line)
    if (this.matching) {
      for (let i = start; i < this.lines.length; i++) if (this.matches(this.lines[i]!)) this.matching.push(i)
    }
    const excess = this.lines.length - this.limit
    if (excess > 0) {
      this.lines.splice(0, excess)
      this.dropped += excess
      if (this.matching) this.matching = this.matching.filter((i) => i >= excess).map((i) => i - excess)
    }
  }

  clear(): void {
    this.lines = []
    this.matching = this.needle ? [] : null
    this.dropped = 0
  }

  /** Keeps only lines containing `text` (any case); empty shows all. */
  search(text: string): void {
    this.needle = text.toLowerCase()
    if (!this.needle) {
      this.matching = null
      return
    }
    this.matching = []
    this.lines.forEach((line, i) => this.matches(line) && this.matching!.push(i))
  }

  private matches(line: LogLine): boolean {
    return line.line.toLowerCase().includes(this.needle) || line.service.toLowerCase().includes(this.needle)
  }

  /** The visible line at a row of the (filtered) list. */
  at(row: number): LogLine | undefined {
    return this.lines[this.matching ? (this.matching[row] ?? -1) : row]
  }

  /** Rows to render for a scroll position: [first, last), with a margin either side. */
  window(scrollTop: number, viewport: number, rowHeight: number, margin = 20): [number, number] {
    const first = Math.max(0, Math.floor(scrollTop / rowHeight) - margin)
    const last = Math.min(this.visible, Math.ceil((scrollTop + viewport) / rowHeight) + margin)
    return [first, Math.max(first, last)]
  }

  text(timestamps: boolean): string {
    return this.lines.map((l) => `${timestamps && l.at ? `${l.at} ` : ''}${l.service} | ${l.line}`).join('\n') + '\n'
  }
}
