/**
 * The parent's side of a forked test node (a child process running one group member, driven over
 * IPC): `ready` resolves on the child's `{ ready: true }` and rejects with the child's
 * `{ startError }` (see startChildGroup) or its exit; `ask` sends `{ ...request, id }` and
 * settles with the child's `{ id, result }` or `{ id, error }`. Calls still pending when the
 * child exits are rejected.
 */
import type { ChildProcess } from 'node:child_process';

export class ChildNode<Request extends object> {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  readonly ready: Promise<void>;

  constructor(readonly id: number, readonly child: ChildProcess) {
    this.ready = new Promise((resolve, reject) => {
      let startError: string | undefined;
      child.once('exit', (code, signal) => {
        reject(new Error(`node ${id} exited (${code ?? signal}) before it was ready${startError !== undefined ? `: ${startError}` : ''}`));
        for (const p of this.pending.values()) p.reject(new Error(`node ${id} exited`));
        this.pending.clear();
      });
      child.on('message', (m: { ready?: true; startError?: string; id?: number; result?: unknown; error?: string }) => {
        if (m.ready) return resolve();
        if (m.startError !== undefined) {
          startError = m.startError;
          return;
        }
        const p = this.pending.get(m.id!);
        this.pending.delete(m.id!);
        if (m.error !== undefined) p?.reject(new Error(`node ${id}: ${m.error}`));
        else p?.resolve(m.result);
      });
    });
  }

  ask<R>(request: Request): Promise<R> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ ...request, id });
    });
  }
}

/** Polls `done` every 20 ms until it resolves true; throws after `timeoutMs`. */
export async function waitUntil(what: string, done: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const started = performance.now();
  while (!(await done())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * In a forked test node: runs `start` (its Group.start) and, if it throws, tells the parent why
 * over IPC before the child exits 1, so a failed start names its cause in the test's failure
 * instead of only "exited (1) before it was ready".
 */
export async function startChildGroup<T>(start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (error) {
    const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    await new Promise<void>((resolve) => process.send!({ startError: text }, () => resolve()));
    throw error;
  }
}
