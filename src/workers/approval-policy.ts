/**
 * Answers for the requests codex app-server (0.169) pushes to a client
 * during a turn, when the gateway answers instead of a person: approvals by
 * policy (accept or decline), and everything that needs a person (questions,
 * elicitations, client-side tools, sign-in) refused, so that a headless turn
 * never waits on an answer that cannot come.
 *
 * Shapes from `codex app-server generate-ts`: v2 approvals answer
 * `{decision: "accept" | "decline" | …}`; `item/permissions/requestApproval`
 * answers with the granted permissions (none when declined) and a scope; the
 * v1 `applyPatchApproval` / `execCommandApproval` answer with a
 * ReviewDecision (`"approved"` or `{denied: {rejection}}`).
 */
import type { HeadlessApprovalPolicy } from '../shared/protocol.js';

export const APPROVAL_METHODS = [
  'item/commandExecution/requestApproval',
  'item/fileChange/requestApproval',
  'item/permissions/requestApproval',
  'applyPatchApproval',
  'execCommandApproval',
] as const;

const APPROVALS = new Set<string>(APPROVAL_METHODS);

export function isApprovalRequest(method: string): boolean {
  return APPROVALS.has(method);
}

const REJECTION = 'declined by the gateway (approvals policy)';

/**
 * The answer to a frame from the child when it is an approval request and
 * the policy answers it: the reply to send back (the frame is then not
 * forwarded). Every approval method name ends in `Approval`, so other frames
 * cost one byte search.
 */
export function policyAnswer(data: Buffer, decision: HeadlessApprovalPolicy): { reply: string; method: string } | undefined {
  if (data.length > 1 << 20 || !data.includes('Approval"')) return undefined;
  let msg: { id?: unknown; method?: unknown; params?: unknown };
  try {
    msg = JSON.parse(data.toString('utf8')) as typeof msg;
  } catch {
    return undefined;
  }
  if (msg === null || typeof msg !== 'object' || typeof msg.method !== 'string' || (typeof msg.id !== 'number' && typeof msg.id !== 'string') || !isApprovalRequest(msg.method)) return undefined;
  return { reply: JSON.stringify({ id: msg.id, result: approvalReply(msg.method, msg.params, decision) }), method: msg.method };
}

/** The result to answer an approval request with, or undefined when `method` is not one. */
export function approvalReply(method: string, params: unknown, decision: HeadlessApprovalPolicy): unknown {
  const accept = decision === 'accept';
  switch (method) {
    case 'item/commandExecution/requestApproval':
    case 'item/fileChange/requestApproval':
      return { decision };
    case 'item/permissions/requestApproval': {
      const asked = (params as { permissions?: Record<string, unknown> } | null)?.permissions ?? {};
      // Grant what was asked (its null entries mean "not asked") or nothing.
      const granted = accept ? Object.fromEntries(Object.entries(asked).filter(([, v]) => v !== null)) : {};
      return { permissions: granted, scope: 'turn' };
    }
    case 'applyPatchApproval':
    case 'execCommandApproval':
      return { decision: accept ? 'approved' : { denied: { rejection: REJECTION } } };
    default:
      return undefined;
  }
}

/**
 * A server request nobody can answer in a headless turn: the reply that
 * refuses it, or a JSON-RPC error for requests with no refusal shape.
 */
export function headlessRefusal(method: string): { result: unknown } | { error: { code: number; message: string } } {
  switch (method) {
    case 'item/tool/requestUserInput':
      return { result: { answers: {} } };
    case 'mcpServer/elicitation/request':
      return { result: { action: 'decline', content: null, _meta: null } };
    case 'item/tool/call':
      return { result: { contentItems: [], success: false } };
    default:
      return { error: { code: -32601, message: `${method} cannot be answered in a turn without a client (codex-app-gateway)` } };
  }
}
