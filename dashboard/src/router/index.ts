// Pages, each loaded when first visited; every page but sign-in needs a session.
import { createRouter, createWebHistory, type RouteComponent } from 'vue-router'
import { useAuthStore } from '@/stores/auth'
import { isNetworkFailure, retrying } from '@/api/retry'

const loaders: (() => Promise<RouteComponent>)[] = []

/** A page loaded on first visit (or ahead of it, see `prefetchPages`), tried again when the
 * network dropped the download. */
const page = (load: () => Promise<RouteComponent>) => {
  loaders.push(load)
  return () => retrying(load)
}

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: '/login', name: 'login', component: page(() => import('@/views/LoginView.vue')), meta: { public: true } },
    {
      path: '/',
      component: page(() => import('@/layouts/AppLayout.vue')),
      children: [
        { path: '', name: 'overview', component: page(() => import('@/views/OverviewView.vue')) },
        { path: 'targets', name: 'targets', component: page(() => import('@/views/TargetsView.vue')) },
        { path: 'targets/:id', name: 'target', component: page(() => import('@/views/TargetView.vue')), props: true },
        { path: 'stacks', name: 'stacks', component: page(() => import('@/views/StacksView.vue')) },
        { path: 'stacks/new', name: 'stack-new', component: page(() => import('@/views/StackView.vue')) },
        { path: 'stacks/:id', name: 'stack', component: page(() => import('@/views/StackView.vue')), props: true },
        { path: 'marketplace', name: 'marketplace', component: page(() => import('@/views/MarketplaceView.vue')) },
        { path: 'marketplace/:id', name: 'template', component: page(() => import('@/views/TemplateView.vue')), props: true },
        { path: 'workflows', name: 'workflows', component: page(() => import('@/views/WorkflowsView.vue')) },
        { path: 'workflows/new', name: 'workflow-new', component: page(() => import('@/views/WorkflowView.vue')) },
        { path: 'workflows/:id', name: 'workflow', component: page(() => import('@/views/WorkflowView.vue')), props: true },
        { path: 'deployments', name: 'deployments', component: page(() => import('@/views/DeploymentsView.vue')) },
        {
          path: 'deployments/:id',
          name: 'deployment',
          component: page(() => import('@/views/DeploymentView.vue')),
          props: true,
        },
        { path: 'audit', name: 'audit', component: page(() => import('@/views/AuditView.vue')) },
        { path: 'settings', name: 'settings', component: page(() => import('@/views/SettingsView.vue')) },
        { path: ':unknown(.*)*', name: 'not-found', component: page(() => import('@/views/NotFoundView.vue')) },
      ],
    },
  ],
})

router.beforeEach(async (to) => {
  const auth = useAuthStore()
  if (to.meta.public) return true
  if (!auth.signedIn) return { name: 'login', query: { redirect: to.fullPath } }
  if (!auth.me) {
    try {
      await auth.loadMe()
    } catch {
      auth.forget()
      return { name: 'login', query: { redirect: to.fullPath } }
    }
  }
  return true
})

/** Downloads every page while the browser is idle, so that moving between them never waits. */
export function prefetchPages() {
  const idle = window.requestIdleCallback ?? ((run: () => void) => setTimeout(run, 1000))
  idle(() => loaders.forEach((load) => void load().catch(() => {})))
}

// A page whose download failed for good (a browser keeps a failed module import failed) is
// loaded by a full navigation instead.
router.onError((error, to) => {
  if (isNetworkFailure(error)) window.location.assign(to.fullPath)
})
