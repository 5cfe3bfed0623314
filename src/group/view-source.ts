/**
 * Where the group's views come from. The group layer reads views only through ViewSource, so the
 * source can change without touching the API above it:
 *
 *   - StaticViewSource (here): every member is listed in the config (`group.members`) and all of
 *     them start together. There is one view, id 1: those members in the listed order, with the
 *     layout the allocator computes for them. No joins, no failures handled, no view changes.
 *   - MembershipViewSource (membership-view-source.ts) over the membership driver
 *     (src/runtime/membership-driver.ts): start() resolves with view 0 of the founders, and
 *     'view' fires for every view installed afterwards (a failed member removed).
 *
 * Contract: current() is undefined before start() resolves and the latest installed view after;
 * views only move forward (ids increase); listeners run synchronously when a view is installed,
 * in registration order; close() stops reporting views and is idempotent.
 */
import { ConfigError } from '../core/errors.js';
import { nodeId, viewId } from '../core/ids.js';
import type { SquallConfig } from '../config/schema.js';
import { runAllocator, type Allocator } from '../membership/layout.js';
import { View, type Member } from '../membership/view.js';

export type ViewListener = (view: View) => void;

export interface ViewSource {
  /** The latest installed view, or undefined before start() resolved. */
  current(): View | undefined;
  /** Calls `listener` for each view installed after the call (the first one too, if later). */
  on(event: 'view', listener: ViewListener): void;
  /** Resolves with the first view this node is a member of. */
  start(): Promise<View>;
  close(): Promise<void>;
}

const MEMBER_PATTERN = /^(\d+)@((?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5})$/;

/**
 * The members listed in `group.members` ("<id>@<host>:<port>", in rank order), checked against
 * this node's own `node.id`, `node.host` and `node.port`. Throws ConfigError naming each key.
 * With `selfListed: false` (a node joining a membership group) the list need not name this node.
 */
export function staticMembersFromConfig(config: SquallConfig, selfListed = true): Member[] {
  const problems: { key: string; message: string }[] = [];
  const listed = config.group.members;
  if (listed.length === 0) {
    throw new ConfigError([
      {
        key: 'group.members',
        message:
          'is empty, and this Squall build starts groups only from a static member list (the ' +
          'membership service that joins nodes dynamically is not wired in yet). Fix: list every ' +
          'member as "<id>@<host>:<port>", e.g. members = ["0@127.0.0.1:7000", "1@127.0.0.1:7001"]',
      },
    ]);
  }
  const members: Member[] = [];
  const seen = new Set<number>();
  listed.forEach((entry, index) => {
    const key = `group.members[${index}]`;
    const match = MEMBER_PATTERN.exec(entry);
    if (match === null) {
      problems.push({
        key,
        message: `is ${JSON.stringify(entry)}. Fix: write "<id>@<host>:<port>", e.g. "1@127.0.0.1:7001"`,
      });
      return;
    }
    const id = Number(match[1]);
    if (id > 0xffff_fffe || seen.has(id)) {
      problems.push({
        key,
        message: `${seen.has(id) ? 'repeats' : 'has out-of-range'} node id ${id}. Fix: give each member its own id (0 … 4294967294)`,
      });
      return;
    }
    seen.add(id);
    members.push({ id: nodeId(id), address: match[2]! });
  });
  const self = members.find((m) => m.id === config.node.id);
  if (problems.length === 0 && self === undefined && selfListed) {
    problems.push({
      key: 'group.members',
      message: `does not list this node (node.id = ${config.node.id}). Fix: add "${config.node.id}@${config.node.host}:${config.node.port}"`,
    });
  }
  if (self !== undefined && self.address !== `${hostForAddress(config.node.host)}:${config.node.port}`) {
    problems.push({
      key: 'node.port',
      message: `this node binds ${config.node.host}:${config.node.port} but group.members lists it at ${self.address}. Fix: make node.host/node.port and its group.members entry agree`,
    });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return members;
}

const hostForAddress = (host: string): string => (host.includes(':') ? `[${host}]` : host);

/** One view, known from the config; see the file comment. */
export class StaticViewSource implements ViewSource {
  private view: View | undefined;
  private readonly listeners: ViewListener[] = [];
  private closed = false;

  constructor(
    private readonly members: readonly Member[],
    private readonly allocator: Allocator,
  ) {}

  /** From a validated config and the layout policies (as passed to Group.start). */
  static fromConfig(config: SquallConfig, allocator: Allocator): StaticViewSource {
    return new StaticViewSource(staticMembersFromConfig(config), allocator);
  }

  current(): View | undefined {
    return this.view;
  }

  on(_event: 'view', listener: ViewListener): void {
    this.listeners.push(listener);
  }

  start(): Promise<View> {
    if (this.view === undefined && !this.closed) {
      const ids = this.members.map((m) => m.id);
      const layout = runAllocator(this.allocator, { previous: undefined, members: ids });
      this.view = new View({
        id: viewId(1),
        members: this.members,
        joined: ids,
        departed: [],
        failed: [],
        layout,
      });
      for (const listener of this.listeners) listener(this.view);
    }
    return this.view === undefined
      ? Promise.reject(new Error('view source closed before start'))
      : Promise.resolve(this.view);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

