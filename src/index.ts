/**
 * codex-app-gateway: one `codex app-server` per workspace, with CODEX_HOME
 * kept in an object store between runs.
 */
export { Supervisor, DEFAULT_DATA_PLANE } from './main/supervisor/supervisor.js';
export type { SupervisorOptions, ConfigBuilder, WorkspaceKey } from './main/supervisor/supervisor.js';
export { ChildHandle } from './main/supervisor/child-handle.js';
export type { ExitStatus } from './main/supervisor/child-handle.js';
export { IdleReaper } from './main/supervisor/idle-reaper.js';
export type { IdleReaperOptions } from './main/supervisor/idle-reaper.js';
export { FileObjectStore } from './shared/stores/file-store.js';
export { S3ObjectStore } from './shared/stores/s3-store.js';
export type { ObjectStore } from './shared/stores/object-store.js';
export type { StoreSpec, FileStoreSpec, S3StoreSpec } from './shared/store-spec.js';
export { GatewayError, ERROR_CODES, isGatewayError } from './shared/errors.js';
export type { ErrorCode } from './shared/errors.js';
export { renderCodexConfig } from './shared/codex-config.js';
export type { ConfigInput, SpawnConfig, ModelProviderInput, AgentServerInput, WireApi, ReasoningEffort } from './shared/codex-config.js';
export { DEFAULT_ENV_ALLOWLIST } from './shared/child-env.js';
export { DEFAULT_ARCHIVE_EXCLUDES, DEFAULT_UNPACK_LIMITS } from './shared/archive-protocol.js';
export type { UnpackLimits } from './shared/archive-protocol.js';
export type { ChildInfo, StopResult, ShardStats, WorkspaceStatus, SpoolStatus, ReapOptions, TurnOutcome, TurnTransportError, ApprovalPolicies } from './shared/protocol.js';
export { DEFAULT_TURN_API } from './main/http/turn-request.js';
export type { TurnApiOptions } from './main/http/turn-request.js';
export { CloseCode } from './shared/close-codes.js';
export { defaultCodexBin } from './shared/codex-bin.js';
export { Gateway } from './main/gateway.js';
export type { GatewayOptions, DrainReport } from './main/gateway.js';
export { DEFAULT_FRONT_LIMITS } from './main/front/front.js';
export type { FrontLimits, FrontObserver } from './main/front/front.js';
export { JwtAuthenticator, RemoteAuthenticator, signWorkspaceToken } from './main/auth/front-door.js';
export type { Authenticator } from './main/auth/front-door.js';
export { gatewayConfigBuilder } from './main/supervisor/config-builder.js';
export type { ModelSettings } from './main/supervisor/config-builder.js';
