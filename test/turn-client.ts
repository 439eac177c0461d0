/**
 * A client of POST /api/turns, as a bot would use it: plain JSON, or the
 * event stream (`Accept: text/event-stream`) parsed into events in arrival
 * order.
 */

export interface TurnReply {
  status: number;
  body: Record<string, unknown>;
}

export interface StreamedEvent {
  event: string;
  data: unknown;
}

export interface StreamReply {
  status: number;
  contentType: string | null;
  events: StreamedEvent[];
}

export function httpUrlOf(wsUrl: string): string {
  return wsUrl.replace(/^ws:/, 'http:');
}

/** One text input, as codex turn/start wants it. */
export function textInput(text: string): Array<Record<string, unknown>> {
  return [{ type: 'text', text, text_elements: [] }];
}

export async function postTurn(baseUrl: string, token: string | undefined, body: unknown, opts: { raw?: string; signal?: AbortSignal } = {}): Promise<TurnReply> {
  const res = await fetch(`${baseUrl}/api/turns`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    body: opts.raw ?? JSON.stringify(body),
    ...(opts.signal === undefined ? {} : { signal: opts.signal }),
  });
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text) as Record<string, unknown> };
}

/**
 * Streams a turn; `onEvent` sees each event as it arrives (return true to
 * stop reading: the client goes away).
 */
export async function streamTurn(baseUrl: string, token: string, body: unknown, onEvent: (e: StreamedEvent) => boolean | void = () => {}): Promise<StreamReply> {
  const ac = new AbortController();
  const res = await fetch(`${baseUrl}/api/turns`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
    signal: ac.signal,
  });
  const events: StreamedEvent[] = [];
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data.push(line.slice(6));
        }
        if (data.length === 0) continue;
        const e = { event, data: JSON.parse(data.join('\n')) as unknown };
        events.push(e);
        if (onEvent(e) === true) {
          ac.abort();
          return { status: res.status, contentType: res.headers.get('content-type'), events };
        }
      }
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  }
  return { status: res.status, contentType: res.headers.get('content-type'), events };
}

/** The text of a turn's agent messages. */
export function agentText(turn: unknown): string {
  const items = ((turn as { items?: unknown[] } | undefined)?.items ?? []) as Array<{ type?: string; text?: string }>;
  return items
    .filter((i) => i.type === 'agentMessage')
    .map((i) => i.text ?? '')
    .join('');
}
