// Builds the dashboard into dist/, which the windflow binary embeds. Element Plus components
// and their styles are imported where they are used, and every page is its own chunk, so the
// first load stays small.
import { fileURLToPath, URL } from 'node:url'
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import AutoImport from 'unplugin-auto-import/vite'
import Components from 'unplugin-vue-components/vite'
import { ElementPlusResolver } from 'unplugin-vue-components/resolvers'

export default defineConfig({
  plugins: [
    vue(),
    AutoImport({ resolvers: [ElementPlusResolver()], dts: 'src/auto-imports.d.ts' }),
    Components({ resolvers: [ElementPlusResolver()], dts: 'src/components.d.ts' }),
  ],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: {
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
    rollupOptions: {
      output: {
        manualChunks(id: string) {
          if (id.includes('node_modules/@codemirror') || id.includes('node_modules/codemirror') || id.includes('node_modules/@lezer')) return 'editor'
          return undefined
        },
      },
    },
  },
  server: {
    // `npm run dev` talks to a control plane on this machine; start it with
    // --allowed-origins http://localhost:5173 or use this proxy.
    proxy: { '/api': { target: process.env.WINDFLOW_URL ?? 'https://127.0.0.1:8443', secure: false, changeOrigin: true } },
  },
})
