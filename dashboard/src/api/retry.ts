// Network failures that are worth a second try: the browser drops requests in flight when the
// machine's network changes (Docker creating a container's interface is enough), so a download
// or a read that failed that way is tried again after a short wait.

/** Whether `error` is the browser's "the request never got an answer", not an HTTP error. */
export function isNetworkFailure(error: unknown): boolean {
  return error instanceof TypeError || (error instanceof Error && /Failed to fetch|NetworkError|dynamically imported module|Importing a module script failed/i.test(error.message))
}

/** Runs `work`, again up to `attempts - 1` times on network failures, waiting a little more each time. */
export async function retrying<T>(work: () => Promise<T>, attempts = 3, waitMs = 300): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work()
    } catch (error) {
      if (attempt >= attempts || !isNetworkFailure(error)) throw error
      await new Promise((resolve) => setTimeout(resolve, waitMs * attempt))
    }
  }
}
