/**
 * Entry of a shard worker: one event loop that owns a slice of the workspace
 * map and the client connections of those workspaces. Started by the
 * Supervisor with a control port (RPC) and a data port (frames).
 */
import { workerData } from 'node:worker_threads';
import type { SnapshotRef } from '../shared/cluster.js';
import { createThreadLogger, flushLogger } from '../shared/logger.js';
import { LoopDelayWindow } from '../shared/loop-delay.js';
import type { HostMethods, HostNotices, ShardMethods, ShardNotices, ShardStats, ShardWorkerData } from '../shared/protocol.js';
import { CloseCode } from '../shared/close-codes.js';
import { RpcPeer } from '../shared/rpc.js';
import { ChildProxy } from './child-proxy.js';
import { parentDeathLauncher } from './parent-death.js';
import { TurnRunner } from './turn-runner.js';
import { WorkspaceTable } from './workspaces.js';

const { init, control, data } = workerData as ShardWorkerData;
const log = createThreadLogger({ level: init.logLevel, pretty: init.logPretty, base: { thread: `shard-${init.shard}`, shard: init.shard } });
if (parentDeathLauncher() === undefined) log.warn('setpriv (util-linux) not found: codex children will not die with the gateway if it is killed; the next start\'s recovery stops them');
const loopDelay = new LoopDelayWindow();


const peer = new RpcPeer<ShardMethods, HostMethods, ShardNotices, HostNotices>(
  control,
  {
    ensure: (p) => table.ensure(p.workspaceId, p.builderId),
    shutdown: (p) => table.shutdown(p.workspaceId, p.reason),
    shutdownAll: (p) => table.shutdownAll(p.reason, p.concurrency),
    status: (p) => table.status(p.workspaceId),
    stats: (): ShardStats => ({
      shard: init.shard,
      workspaces: table.statuses(),
      spool: table.homes.spool.status(),
      busy: table.busyWorkspaces(),
      connections: proxy.connectionCount,
      eventLoopDelayP99Ms: loopDelay.p99Ms(),
      recovering: table.recovering,
      cachedHomes: table.homes.cache.size,
      cachedBytes: table.homes.cache.bytes,
    }),
    reapIdle: (p) => table.reapIdle(p),
    evictCandidate: () => table.evictCandidate(),
    evict: (p) => table.evict(p.workspaceId, p.lastActivity),
    runTurn: (p) => turns.run(p),
    prestart: (p) => table.ensure(p.workspaceId, 0, { rank: p.rank, lastActivity: p.lastActivity }),
    handover: async () => {
      proxy.closeAll(CloseCode.ServiceRestart, 'GW_RESTARTING: gateway restarting; reconnect');
      const records = await table.release();
      log.info({ handedOver: records.length }, 'shard: children handed over');
      return records;
    },
    close: async () => {
      proxy.closeAll(1001, 'GW_CLOSED: gateway shutting down');
      const results = await table.close(Math.max(1, Math.ceil(init.shutdownConcurrency)));
      log.info({ stopped: results.length, unsaved: results.filter((r) => r.stopped && !r.saved).length }, 'shard closed');
      flushLogger(log);
      return results;
    },
  },
  {
    touch: (p) => table.touch(p.workspaceId),
    turnClientGone: (p) => turns.clientGone(p.turnRequestId, p.interrupt),
  },
  (what) => log.error({ what }, 'unknown control message'),
);

const table: WorkspaceTable = new WorkspaceTable(
  init,
  {
    buildConfig: (builderId, workspaceId, loopbackToken) => peer.call('buildConfig', { builderId, workspaceId, loopbackToken }),
    archive: (task) => peer.call('archive', task),
    childStarted: (workspaceId, generation, pid, adopted) => peer.notify('childStarted', { workspaceId, generation, pid, ...(adopted === true ? { adopted } : {}) }),
    childExited: (workspaceId, generation, exit) => peer.notify('childExited', { workspaceId, generation, code: exit.code, signal: exit.signal }),
    enterSpawn: (workspaceId, generation, priority, rank) => peer.call('enterSpawn', { workspaceId, generation, priority, rank }),
    spawnSettled: (generation, ok) => peer.notify('spawnSettled', { generation, ok }),
    promoteSpawn: (generation) => peer.notify('promoteSpawn', { generation }),
    workspaceStopped: (workspaceId, reason, saved) => peer.notify('workspaceStopped', { workspaceId, reason, saved }),
    startFinished: (workspaceId, ms, errorCode) => peer.notify('startFinished', { workspaceId, ms, errorCode }),
    registerToken: async (key, workspaceId) => void (await peer.call('registerToken', { key, workspaceId })),
    forgetToken: (key) => peer.notify('forgetToken', { key }),
    ...(init.cluster
      ? {
          cluster: {
            claim: (workspaceId: string) => peer.call('clusterClaim', { workspaceId }),
            current: (workspaceId: string) => peer.call('clusterCurrent', { workspaceId }),
            commit: (workspaceId: string, runEpoch: number, ref: SnapshotRef, homePath?: string) => peer.call('clusterCommit', { workspaceId, runEpoch, ref, ...(homePath === undefined ? {} : { homePath }) }),
            release: async (workspaceId: string) => {
              await peer.call('clusterRelease', { workspaceId });
            },
          },
        }
      : {}),
  },
  {
    childGone: (workspaceId, generation, reason) => {
      proxy.childGone(workspaceId, generation, reason);
      turns.childGone(workspaceId, generation, reason);
    },
  },
  log,
);

const approvalAnswered = (path: 'http' | 'websocket') => (workspaceId: string, method: string, decision: string): void =>
  peer.notify('approvalAnswered', { workspaceId, path, method, decision });
const proxy: ChildProxy = new ChildProxy(data, table, init.dataPlane, log, init.approvals.websocket, approvalAnswered('websocket'));
const turns: TurnRunner = new TurnRunner(
  table,
  init.approvals,
  init.dataPlane.maxFrameBytes,
  {
    event: (turnRequestId, method, params) => peer.notify('turnEvent', { turnRequestId, method, params }),
    approvalAnswered: approvalAnswered('http'),
  },
  log,
);
table.recover(init.adopt);
