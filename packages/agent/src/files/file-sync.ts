/**
 * Mesh files on the agent: publish (hash, resumable upload, catalogue entry),
 * and receive everything the hub's catalogue lists: fetched in the background
 * with resume from the partial file, verified by SHA-256 before it is
 * renamed into place, removed again on a tombstone. A file never appears
 * under its final name unless it is whole and verified.
 */
import type { Hash } from 'node:crypto';
import { chmod, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import type { ClientHttp2Stream } from 'node:http2';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import {
  ErrorCodes,
  FILE_IO_CHUNK_BYTES,
  type FileEntry,
  FileHeaders,
  FilePaths,
  type FilesMessage,
  ZtmError,
  fromWire,
  hashingTap,
  readJsonBody,
  sha256OfFile,
  sha256OfPrefix,
  validateFileName,
} from '@ztm/proto';
import { writeFileAtomic } from '../identity/identity-store.js';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { requestJson } from '../session/h2-json.js';

const PARTIAL_DIR = '.ztm-partial';
const MAX_PARALLEL_FETCHES = 2;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;

export interface LocalFile {
  sha256: string;
  size: number;
}

export interface FileView extends FileEntry {
  local: string;
}

export interface FileSyncOptions {
  client: HubClient;
  filesDir: string;
  /** Where the index of received files is kept; none in library use. */
  indexFile?: string;
  log: Logger;
}

export class FileSync {
  readonly #o: FileSyncOptions;
  readonly #catalogue = new Map<string, FileEntry>();
  #index: Record<string, LocalFile> = {};
  readonly #wanted = new Map<string, FileEntry>();
  readonly #state = new Map<string, string>();
  /** Files this endpoint is publishing now (name → sha256): never fetched back. */
  readonly #publishing = new Map<string, string>();
  #active = 0;
  #stopped = false;
  verifyFailures = 0;

  constructor(o: FileSyncOptions) {
    this.#o = o;
  }

  async start(): Promise<void> {
    await mkdir(join(this.#o.filesDir, PARTIAL_DIR), { recursive: true, mode: 0o700 });
    if (this.#o.indexFile) {
      try {
        this.#index = JSON.parse(await readFile(this.#o.indexFile, 'utf8')) as Record<string, LocalFile>;
      } catch {
        this.#index = {};
      }
    }
    this.#o.client.on('files', (m) => this.onCatalogue(m));
    this.#o.client.on('online', () => this.#pump());
  }

  stop(): void {
    this.#stopped = true;
  }

  onCatalogue(m: FilesMessage): void {
    if (m.full) this.#catalogue.clear();
    for (const e of m.entries) {
      this.#catalogue.set(e.name, e);
      if (e.deleted) {
        this.#wanted.delete(e.name);
        void this.#remove(e.name);
      } else if (this.#index[e.name]?.sha256 !== e.sha256 && this.#publishing.get(e.name) !== e.sha256) {
        this.#wanted.set(e.name, e);
        this.#state.set(e.name, 'pending');
      }
    }
    this.#pump();
  }

  list(): FileView[] {
    return [...this.#catalogue.values()]
      .filter((e) => !e.deleted)
      .map((e) => ({ ...e, local: this.#index[e.name]?.sha256 === e.sha256 ? 'present' : (this.#state.get(e.name) ?? 'pending') }));
  }

  /** Publish a local file under `name`: hash it, upload what the hub lacks
   * (resuming a partial upload), record it in the catalogue, keep a copy here. */
  async publish(path: string, name: string): Promise<FileEntry> {
    validateFileName(name);
    const st = await stat(path).catch(() => {
      throw new ZtmError(ErrorCodes.NOT_FOUND, `cannot read ${path}`);
    });
    if (!st.isFile()) throw new ZtmError(ErrorCodes.BAD_REQUEST, `${path} is not a regular file`);
    const sha256 = await sha256OfFile(path);
    for (let attempt = 0; ; attempt++) {
      const session = this.#session();
      const status = await requestJson<{ complete: boolean; received: number }>(session, 'GET', FilePaths.contentStatus(sha256));
      if (status.complete) break;
      if (attempt >= 5) throw new ZtmError(ErrorCodes.HUB_UNREACHABLE, `upload of ${name} did not complete after ${attempt} attempts`);
      const req = session.request({
        ':method': 'PUT',
        ':path': FilePaths.content(sha256),
        [FileHeaders.offset]: String(status.received),
        [FileHeaders.size]: String(st.size),
      });
      const answer = responseOf(req);
      // The hub may answer (a refusal) before the body is sent: handled below,
      // never an unhandled rejection meanwhile.
      answer.catch(() => {});
      await pipeline(createReadStream(path, { start: status.received, highWaterMark: FILE_IO_CHUNK_BYTES }), req).catch(() => {});
      const r = (await answer) as { complete: boolean };
      if (r.complete) break;
    }
    // The hub's broadcast of this entry can arrive before our own copy has
    // landed: it must not make us download what we just uploaded.
    this.#publishing.set(name, sha256);
    let entry: FileEntry;
    try {
      entry = await requestJson<FileEntry>(this.#session(), 'POST', FilePaths.publish, { name, sha256, size: st.size });
      // Our own copy, so this endpoint shows the same tree as every other.
      const partial = join(this.#o.filesDir, PARTIAL_DIR, `${sha256}.local`);
      await copyFile(path, partial);
      await this.#land(name, partial, { sha256, size: st.size });
    } finally {
      if (this.#publishing.get(name) === sha256) this.#publishing.delete(name);
    }
    this.#catalogue.set(name, entry);
    this.#o.log.info({ file: name, size: st.size }, 'file published');
    return entry;
  }

  async unpublish(name: string): Promise<FileEntry> {
    validateFileName(name);
    const session = this.#session();
    const req = session.request({ ':method': 'DELETE', ':path': FilePaths.entry(name) });
    req.end();
    const entry = (await responseOf(req)) as FileEntry;
    this.onCatalogue({ type: 'files', full: false, entries: [entry] });
    return entry;
  }

  #session() {
    const s = this.#o.client.session;
    if (!s || this.#o.client.state !== 'online')
      throw new ZtmError(ErrorCodes.OFFLINE, 'not connected to the hub; try again when ztm-agent status shows online');
    return s;
  }

  #pump(): void {
    if (this.#stopped || this.#o.client.state !== 'online') return;
    for (const [name, entry] of this.#wanted) {
      if (this.#active >= MAX_PARALLEL_FETCHES) return;
      if (this.#state.get(name)?.startsWith('fetching')) continue;
      this.#wanted.delete(name);
      this.#active++;
      void this.#fetchWithRetry(entry).finally(() => {
        this.#active--;
        this.#pump();
      });
    }
  }

  async #fetchWithRetry(entry: FileEntry): Promise<void> {
    for (let attempt = 0; !this.#stopped; attempt++) {
      const latest = this.#catalogue.get(entry.name);
      if (!latest || latest.deleted || latest.sha256 !== entry.sha256) return; // superseded
      try {
        this.#state.set(entry.name, 'fetching');
        await this.#fetch(entry);
        this.#state.delete(entry.name);
        return;
      } catch (err) {
        const e = err as ZtmError;
        this.#state.set(entry.name, `retrying: ${e.message}`);
        this.#o.log.warn({ file: entry.name, code: e.code, reason: e.message, attempt }, 'file fetch failed; will retry');
        const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
        await new Promise((r) => setTimeout(r, delay).unref());
        while (!this.#stopped && this.#o.client.state !== 'online') await new Promise((r) => setTimeout(r, 200).unref());
      }
    }
  }

  async #fetch(entry: FileEntry): Promise<void> {
    const partial = join(this.#o.filesDir, PARTIAL_DIR, entry.sha256);
    let offset = await stat(partial).then(
      (s) => s.size,
      () => 0,
    );
    if (offset > entry.size) {
      await rm(partial, { force: true });
      offset = 0;
    }
    if (entry.size === 0) await writeFile(partial, '');
    let hash: Hash | undefined; // set when bytes are fetched; else the file on disk is hashed
    if (offset < entry.size) {
      const req = this.#session().request({ ':method': 'GET', ':path': FilePaths.content(entry.sha256), range: `bytes=${offset}-` });
      req.end();
      const status = await new Promise<number>((resolve, reject) => {
        req.once('response', (h) => resolve(Number(h[':status'])));
        req.once('error', reject);
        req.once('close', () => reject(new ZtmError(ErrorCodes.HUB_UNREACHABLE, 'hub closed the download')));
      });
      if (status >= 400) throw fromWire(await readJsonBody(req).catch(() => undefined), status);
      if (status === 200) offset = 0; // the hub sent it all: start over
      if (offset > 0) this.#o.log.info({ file: entry.name, offset }, 'resuming file download');
      // Verified as it streams (after the bytes already here when resuming):
      // the finished file is not read a second time.
      hash = await sha256OfPrefix(partial, offset);
      await pipeline(req, hashingTap(hash), createWriteStream(partial, { flags: offset > 0 ? 'a' : 'w', mode: 0o600, highWaterMark: FILE_IO_CHUNK_BYTES }));
    }
    const size = (await stat(partial)).size;
    if (size < entry.size) {
      // The download stopped short: node:http2 ends the streams of a session
      // that died (hub killed, link cut) as if they had finished. What arrived
      // is kept, and the next attempt resumes after it.
      throw new ZtmError(ErrorCodes.HUB_UNREACHABLE, `download of ${entry.name} stopped at ${size} of ${entry.size} bytes; resuming when the hub is back`);
    }
    const actual = size !== entry.size ? '' : hash ? hash.digest('hex') : await sha256OfFile(partial);
    if (actual !== entry.sha256) {
      await rm(partial, { force: true });
      this.verifyFailures++;
      throw new ZtmError(
        ErrorCodes.BAD_FRAME,
        `content of ${entry.name} did not verify (${size} of ${entry.size} bytes, sha256 ${actual.slice(0, 12) || '-'}…); discarded`,
      );
    }
    const latest = this.#catalogue.get(entry.name);
    if (!latest || latest.deleted || latest.sha256 !== entry.sha256) return; // superseded while fetching
    await this.#land(entry.name, partial, { sha256: entry.sha256, size: entry.size });
    this.#o.log.info({ file: entry.name, size: entry.size }, 'file received');
  }

  /** Rename a verified file into place and record it. */
  async #land(name: string, from: string, f: LocalFile): Promise<void> {
    const final = join(this.#o.filesDir, name);
    await mkdir(dirname(final), { recursive: true });
    await chmod(from, 0o644);
    await rename(from, final);
    this.#index[name] = f;
    this.#saveIndex();
  }

  async #remove(name: string): Promise<void> {
    if (!this.#index[name]) return;
    delete this.#index[name];
    this.#state.delete(name);
    await rm(join(this.#o.filesDir, name), { force: true });
    this.#saveIndex();
    this.#o.log.info({ file: name }, 'file removed (unpublished)');
  }

  #saveIndex(): void {
    if (this.#o.indexFile) writeFileAtomic(this.#o.indexFile, `${JSON.stringify(this.#index, null, 2)}\n`, 0o600);
  }
}

function responseOf(req: ClientHttp2Stream): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let status = 0;
    req.once('response', (h) => {
      status = Number(h[':status']);
    });
    readJsonBody(req, 1024 * 1024)
      .then((body) => (status >= 400 || status === 0 ? reject(fromWire(body, status)) : resolve(body)))
      .catch(reject);
  });
}
