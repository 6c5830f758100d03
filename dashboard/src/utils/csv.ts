// CSV in and out, for bulk onboarding: RFC 4180 quoting, a header row optional.

/** Parses CSV text into rows of fields. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = []
  let row: string[] = []
  let field = ''
  let quoted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"'
        i++
      } else if (c === '"') quoted = false
      else field += c
    } else if (c === '"') quoted = true
    else if (c === ',') {
      row.push(field)
      field = ''
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++
      row.push(field)
      rows.push(row)
      row = []
      field = ''
    } else field += c
  }
  if (field !== '' || row.length > 0) {
    row.push(field)
    rows.push(row)
  }
  return rows.filter((r) => r.some((f) => f.trim() !== ''))
}

export interface ServerRow {
  line: number
  name: string
  labels: string
}

/** The servers of a `name,labels` file; a first row naming the columns is skipped. */
export function serverRows(text: string): ServerRow[] {
  const rows = parseCsv(text)
  const header = rows[0]?.[0]?.trim().toLowerCase() === 'name'
  return rows.slice(header ? 1 : 0).map((r, i) => ({
    line: i + (header ? 2 : 1),
    name: (r[0] ?? '').trim(),
    labels: (r[1] ?? '').trim(),
  }))
}

function quote(field: string): string {
  return /[",\n\r]/.test(field) ? `"${field.replace(/"/g, '""')}"` : field
}

export function toCsv(rows: string[][]): string {
  return rows.map((r) => r.map(quote).join(',')).join('\n') + '\n'
}
