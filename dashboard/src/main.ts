import { createApp } from 'vue'
import { createPinia } from 'pinia'
import { VueQueryPlugin, QueryClient } from '@tanstack/vue-query'
import 'element-plus/theme-chalk/dark/css-vars.css'
// Components are imported on demand with their styles; these two are called from code
// (ElMessage, ElMessageBox), where the on-demand import does not see them.
import 'element-plus/es/components/message/style/css'
import 'element-plus/es/components/message-box/style/css'
import './styles.css'
import App from './App.vue'
import { router } from './router'
import { i18n } from './i18n'

const queries = new QueryClient({
  defaultOptions: { queries: { staleTime: 10_000, retry: 1, refetchOnWindowFocus: true } },
})

// A stylesheet or script of a page failed to download: load the page afresh.
window.addEventListener('vite:preloadError', (event) => {
  event.preventDefault()
  window.location.reload()
})

createApp(App).use(createPinia()).use(router).use(i18n).use(VueQueryPlugin, { queryClient: queries }).mount('#app')
