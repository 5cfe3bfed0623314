/** Waiting on worker threads that post {kind: ...} messages (load tests and benchmarks). */
import type { Worker } from 'node:worker_threads';

/** Resolves with the worker's next message of this kind; rejects if the worker errors. */
export function workerMessage<T>(worker: Worker, kind: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const listener = (m: { kind: string }): void => {
      if (m.kind !== kind) return;
      worker.off('message', listener);
      resolve(m as T);
    };
    worker.on('message', listener);
    worker.once('error', reject);
  });
}

/** Asks the worker to close its endpoints, waits for it, terminates it; returns its report. */
export async function stopWorker<T = unknown>(worker: Worker): Promise<T> {
  const closed = workerMessage<T>(worker, 'closed');
  worker.postMessage({ kind: 'close' });
  const report = await closed;
  await worker.terminate();
  return report;
}
