/**
 * What a user finds when they come back to a workspace after a fault: the
 * marker file a scenario wrote into its home, and the threads codex lists.
 * Scenarios count a loss for a marker or a thread that did not come back.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { AppServerClient } from '../fixtures/app-server-client.js';

export const MARKER_FILE = 'fault-marker.txt';

export interface Seen {
  codexHome: string;
  marker: string | undefined;
  threads: string[];
}

/** A new client of the workspace behind `url`: its home's marker and its thread ids. */
export async function whatComesBack(url: string, token: string): Promise<Seen> {
  const c = await AppServerClient.connect(url, { token });
  try {
    const { codexHome } = await c.initialize();
    const marker = await readFile(path.join(codexHome, MARKER_FILE), 'utf8').catch(() => undefined);
    return { codexHome, marker, threads: (await c.listThreads()).map((th) => th.id) };
  } finally {
    await c.close();
  }
}
