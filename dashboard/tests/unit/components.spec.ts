import { describe, expect, it } from 'vitest'
import { flushPromises, mount } from '@vue/test-utils'
import { createI18n } from 'vue-i18n'
import en from '@/i18n/en'
import DiffView from '@/components/DiffView.vue'
import ActivityChart from '@/components/ActivityChart.vue'
import WorkflowNodeSettings from '@/components/WorkflowNodeSettings.vue'
import ElementPlus from 'element-plus'

const i18n = createI18n({ legacy: false, locale: 'en', messages: { en } })

describe('DiffView', () => {
  it('pairs changed lines and marks what was removed and added', () => {
    const wrapper = mount(DiffView, { props: { before: 'a\nb\nc\n', after: 'a\nB\nc\nd\n', beforeLabel: 'v1', afterLabel: 'v2' } })
    const rows = wrapper.findAll('tbody tr').map((r) => r.findAll('td').map((c) => c.text()))
    expect(rows).toEqual([
      ['a', 'a'],
      ['−b', '+B'],
      ['c', 'c'],
      ['', '+d'],
    ])
    expect(wrapper.findAll('td.gone')).toHaveLength(1)
    expect(wrapper.findAll('td.new')).toHaveLength(2)
  })
})

describe('ActivityChart', () => {
  it('draws a bar per series and day, and says the numbers in a table', () => {
    const days = [
      { day: '2026-11-24', applied: 3, failed: 1, drift_repaired: 0, removed: 0 },
      { day: '2026-11-25', applied: 0, failed: 0, drift_repaired: 2, removed: 1 },
    ]
    const wrapper = mount(ActivityChart, { props: { days }, global: { plugins: [i18n] } })
    expect(wrapper.findAll('rect')).toHaveLength(8)
    expect(wrapper.find('svg').attributes('role')).toBe('img')
    expect(wrapper.find('table').text()).toContain('2026-11-25')
    const tallest = Math.max(...wrapper.findAll('rect').map((r) => Number(r.attributes('height'))))
    expect(tallest).toBeCloseTo(130 * 0.75)
  })
})

describe('WorkflowNodeSettings', () => {
  it("shows a form of the node type's settings, editing the canvas's node in place", async () => {
    const node = { id: 'wait', type: 'wf' as const, position: { x: 0, y: 0 }, data: { type: 'wait', name: '', config: { seconds: 60 } as Record<string, unknown> } }
    const wrapper = mount(WorkflowNodeSettings, { props: { node }, global: { plugins: [i18n, ElementPlus] } })
    expect(wrapper.text()).toContain('Seconds')
    expect(wrapper.text()).toContain("{{ trigger.name }}")
    // Element Plus gives the inputs their ids once mounted.
    await flushPromises()
    await wrapper.find('#wf-node-name').setValue('Pause')
    expect(node.data.name).toBe('Pause')
  })
})
