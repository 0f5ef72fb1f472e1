/**
 * Files on the hub: routes for content and catalogue, authorization by
 * certificate identity, bounded concurrent transfers, and pushing catalogue
 * changes to every online agent.
 */
import { type IncomingHttpHeaders, type ServerHttp2Stream, constants as h2 } from 'node:http2';
import {
  CATALOGUE_FRAME_BUDGET,
  ErrorCodes,
  type FileEntry,
  FileHeaders,
  SHA256_HEX,
  ZtmError,
  catalogueMessages,
  readStreamJson,
  respondError,
  respondJson,
  toZtmError,
  validateFileName,
} from '@ztm/proto';
import type { Logger } from '../log.js';
import type { FileCatalogue } from '../registry/file-catalogue.js';
import type { AgentSession } from '../session/agent-session.js';
import type { SessionManager } from '../session/session-manager.js';
import type { ContentStore } from './content-store.js';

/** Changes held for one session while its first catalogue is being sent;
 * past this the agent is not reading and is dropped (it re-syncs on return). */
const MAX_HELD_CHANGES = 10_000;

export interface FileServiceOptions {
  catalogue: FileCatalogue;
  store: ContentStore;
  sessions: SessionManager;
  log: Logger;
  maxFileBytes: number;
  maxTransfers: number;
}

export class FileService {
  readonly #o: FileServiceOptions;
  #transfers = 0;
  /** Sessions still receiving their first catalogue, with the changes held for them. */
  readonly #syncing = new Map<AgentSession, FileEntry[]>();

  constructor(o: FileServiceOptions) {
    this.#o = o;
  }

  get transfers(): number {
    return this.#transfers;
  }

  /** The whole catalogue for a session that just came online, in frames at
   * the agent's pace; changes made meanwhile are held and sent after it, so a
   * newer entry is never overwritten by the older snapshot. */
  async sendCatalogue(session: AgentSession): Promise<void> {
    const held: FileEntry[] = [];
    this.#syncing.set(session, held);
    try {
      for (const m of catalogueMessages(this.#o.catalogue.all())) if (!(await session.sendControlPaced(m))) return;
      for (const m of catalogueMessages(held, CATALOGUE_FRAME_BUDGET, false)) session.sendControl(m);
    } finally {
      this.#syncing.delete(session);
    }
  }

  #broadcast(entry: FileEntry): void {
    for (const s of this.#o.sessions.all()) {
      if (s.state !== 'online') continue;
      const held = this.#syncing.get(s);
      if (held && held.length >= MAX_HELD_CHANGES)
        s.destroy(new ZtmError(ErrorCodes.TOO_MANY, 'control stream not read by agent (catalogue changes piling up)'));
      else if (held) held.push(entry);
      else s.sendControl({ type: 'files', full: false, entries: [entry] });
    }
  }

  /** Routes under /v1/files and /v1/content; false if the path is not ours. */
  handle(session: AgentSession, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean {
    const method = headers[':method'];
    const path = String(headers[':path'] ?? '');
    const entryMatch = /^\/v1\/files\/(.+)$/.exec(path);
    const statusMatch = /^\/v1\/content\/([0-9a-f]{64})\/status$/.exec(path);
    const contentMatch = /^\/v1\/content\/([0-9a-f]{64})$/.exec(path);
    if (method === 'POST' && path === '/v1/files') {
      void this.#run(stream, async () => this.#publish(session, await readStreamJson(stream)));
      return true;
    }
    if (method === 'DELETE' && entryMatch) {
      const name = decodeURIComponent(entryMatch[1] as string);
      void this.#run(stream, async () => this.#unpublish(session, name));
      return true;
    }
    if (method === 'GET' && statusMatch) {
      const sha = statusMatch[1] as string;
      respondJson(stream, 200, { complete: this.#o.store.has(sha), received: this.#o.store.has(sha) ? this.#o.store.size(sha) : this.#o.store.received(sha) });
      return true;
    }
    if (contentMatch) {
      const sha = contentMatch[1] as string;
      if (method === 'PUT') this.#upload(session, stream, headers, sha);
      else if (method === 'GET') this.#download(stream, headers, sha);
      else respondError(stream, new ZtmError(ErrorCodes.NOT_FOUND, `no route ${method} ${path}`));
      return true;
    }
    return false;
  }

  async #run(stream: ServerHttp2Stream, fn: () => Promise<unknown>): Promise<void> {
    try {
      respondJson(stream, 200, await fn());
    } catch (err) {
      respondError(stream, err);
    }
  }

  #ownerCheck(session: AgentSession, name: string): FileEntry | undefined {
    const existing = this.#o.catalogue.get(name);
    if (existing && existing.user !== session.user) {
      throw new ZtmError(ErrorCodes.FORBIDDEN, `file ${name} belongs to user ${existing.user}; endpoint ${session.endpoint} acts for ${session.user}`);
    }
    return existing;
  }

  #publish(session: AgentSession, body: unknown): FileEntry {
    const b = (body ?? {}) as { name?: unknown; sha256?: unknown; size?: unknown };
    const name = validateFileName(String(b.name ?? ''));
    if (typeof b.sha256 !== 'string' || !SHA256_HEX.test(b.sha256)) throw new ZtmError(ErrorCodes.BAD_REQUEST, 'sha256 must be lowercase hex');
    if (typeof b.size !== 'number' || !Number.isInteger(b.size) || b.size < 0)
      throw new ZtmError(ErrorCodes.BAD_REQUEST, 'size must be a whole number of bytes');
    const existing = this.#ownerCheck(session, name);
    if (!this.#o.store.has(b.sha256) || this.#o.store.size(b.sha256) !== b.size) {
      throw new ZtmError(ErrorCodes.NOT_FOUND, `content ${b.sha256} is not on the hub yet: upload it first`);
    }
    const entry = this.#o.catalogue.put({
      name,
      sha256: b.sha256,
      size: b.size,
      publisher: session.endpoint,
      user: session.user,
      publishedAt: Date.now(),
      deleted: false,
      version: (existing?.version ?? 0) + 1,
    });
    if (existing && existing.sha256 !== entry.sha256 && !this.#o.catalogue.isReferenced(existing.sha256)) this.#o.store.remove(existing.sha256);
    this.#o.log.info({ file: name, size: entry.size, publisher: session.endpoint, version: entry.version }, 'file published');
    this.#broadcast(entry);
    return entry;
  }

  #unpublish(session: AgentSession, name: string): FileEntry {
    validateFileName(name);
    const existing = this.#ownerCheck(session, name);
    if (!existing || existing.deleted) throw new ZtmError(ErrorCodes.NOT_FOUND, `no published file ${name}`);
    const entry = this.#o.catalogue.put({ ...existing, publisher: session.endpoint, publishedAt: Date.now(), deleted: true, version: existing.version + 1 });
    if (!this.#o.catalogue.isReferenced(existing.sha256)) this.#o.store.remove(existing.sha256);
    this.#o.log.info({ file: name, publisher: session.endpoint }, 'file unpublished');
    this.#broadcast(entry);
    return entry;
  }

  #slot(stream: ServerHttp2Stream): boolean {
    if (this.#transfers >= this.#o.maxTransfers) {
      respondError(stream, new ZtmError(ErrorCodes.TOO_MANY, `hub is moving ${this.#transfers} files already; retry shortly`));
      return false;
    }
    this.#transfers++;
    stream.once('close', () => this.#transfers--);
    return true;
  }

  #upload(session: AgentSession, stream: ServerHttp2Stream, headers: IncomingHttpHeaders, sha: string): void {
    const offset = Number(headers[FileHeaders.offset] ?? 0);
    const size = Number(headers[FileHeaders.size]);
    if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(size) || size < 0) {
      respondError(stream, new ZtmError(ErrorCodes.BAD_REQUEST, `${FileHeaders.offset} and ${FileHeaders.size} must be whole numbers`));
      return;
    }
    if (!this.#slot(stream)) return;
    this.#o.store.append(sha, offset, size, stream, this.#o.maxFileBytes).then(
      (r) => {
        if (r.complete) this.#o.log.debug({ sha256: sha, size, endpoint: session.endpoint }, 'content stored');
        respondJson(stream, 200, r);
      },
      (err) => {
        const e = toZtmError(err);
        if (e.code === ErrorCodes.STORAGE)
          this.#o.log.error({ sha256: sha, size, endpoint: session.endpoint, reason: e.message }, 'upload refused by the disk');
        refuseUpload(stream, e, Math.min(size - offset, this.#o.maxFileBytes));
      },
    );
  }

  #download(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, sha: string): void {
    if (!this.#o.store.has(sha)) {
      respondError(stream, new ZtmError(ErrorCodes.NOT_FOUND, `no content ${sha} on the hub`));
      return;
    }
    const size = this.#o.store.size(sha);
    const range = /^bytes=(\d+)-$/.exec(String(headers.range ?? ''));
    const start = range ? Number(range[1]) : 0;
    if (start > size) {
      respondError(stream, new ZtmError(ErrorCodes.BAD_REQUEST, `range starts past the end (${size} bytes)`));
      return;
    }
    if (!this.#slot(stream)) return;
    stream.respond({ ':status': range ? 206 : 200, 'content-length': size - start, [FileHeaders.size]: size });
    const src = this.#o.store.read(sha, start);
    src.on('error', () => stream.close());
    src.pipe(stream);
    stream.once('close', () => src.destroy());
  }
}

/** Answer a refused upload once the rest of its body has arrived (discarded;
 * at most `expected` more bytes, no more than an upload may send anyway): a
 * sender still writing when the answer comes first sees a reset instead of
 * the reason (and ztm-agent's publish does not survive an early answer). */
function refuseUpload(stream: ServerHttp2Stream, err: ZtmError, expected: number): void {
  if (stream.readableEnded || stream.destroyed) {
    respondError(stream, err);
    return;
  }
  let left = expected + 64 * 1024;
  stream.on('data', (c: Buffer) => {
    left -= c.length;
    if (left < 0) stream.close(h2.NGHTTP2_CANCEL);
  });
  stream.once('end', () => respondError(stream, err));
  stream.resume();
}
