/**
 * Mesh files: publish once, every agent receives it, verified.
 *
 *   publisher                          hub                               every agent
 *   GET  /v1/content/SHA/status  ──▶  {complete, received}
 *   PUT  /v1/content/SHA         ──▶  appends at `ztm-offset` (resumable);
 *        (ztm-offset, ztm-size)       verifies SHA-256 when all bytes are in
 *   POST /v1/files {name,sha256,size} ▶ catalogue entry (publisher from cert)
 *                                     ── control `files` delta ──────────▶  GET /v1/content/SHA
 *                                                                           (range: bytes=N- to resume)
 *                                                                           verify, rename into place
 *   DELETE /v1/files/NAME        ──▶  tombstone ── `files` delta ───────▶  remove local copy
 *
 * Content is addressed by SHA-256 and moved as streams (never whole in
 * memory). A name may be replaced or removed only by the user that first
 * published it.
 */
import { type Hash, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ErrorCodes, ZtmError } from './errors.js';

export interface FileEntry {
  name: string;
  sha256: string;
  size: number;
  publisher: string;
  user: string;
  publishedAt: string;
  deleted: boolean;
  version: number;
}

export const FilePaths = {
  publish: '/v1/files',
  entry: (name: string) => `/v1/files/${encodeURIComponent(name)}`,
  content: (sha256: string) => `/v1/content/${sha256}`,
  contentStatus: (sha256: string) => `/v1/content/${sha256}/status`,
} as const;

export const FileHeaders = {
  offset: 'ztm-offset',
  size: 'ztm-size',
} as const;

export const SHA256_HEX = /^[0-9a-f]{64}$/;

/** Names are relative paths of safe segments: no `..`, no absolute paths, no
 * empty or hidden-by-dot-only segments, at most 255 bytes. */
export function validateFileName(name: string): string {
  const bad = (why: string) => new ZtmError(ErrorCodes.BAD_REQUEST, `file name ${JSON.stringify(name)} is not allowed: ${why}`);
  if (typeof name !== 'string' || name.length === 0) throw bad('it is empty');
  if (Buffer.byteLength(name) > 255) throw bad('longer than 255 bytes');
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) throw bad('absolute paths are refused; use a relative name like app/config.json');
  for (const seg of name.split('/')) {
    if (seg === '..' || seg === '.') throw bad("'.' and '..' segments are refused");
    if (seg === '') throw bad('empty path segment');
    if (!/^[A-Za-z0-9._@+-]+$/.test(seg)) throw bad('use letters, digits and . _ - @ + in each segment');
    if (seg.startsWith('.ztm')) throw bad("names starting with '.ztm' are reserved");
  }
  return name;
}

/** Largest file the hub accepts unless configured otherwise. */
export const DEFAULT_MAX_FILE_BYTES = 4 * 1024 ** 3;

/** How much a file transfer's disk streams hold before they push back: a
 * write stream queues up to this much while one write is in flight and then
 * writes it all at once. With node's 16 KiB default, a file written from
 * HTTP/2 went to the disk one or two DATA frames per write, each a round trip
 * through libuv's thread pool: that, not the CPU, bounded an upload to
 * ≈ 100 MiB/s (docs/performance.md). The stages between HTTP/2 and the disk
 * (hash, copy) keep node's default: larger ones bought nothing (same run) and
 * would hold more per transfer. */
export const FILE_IO_CHUNK_BYTES = 1024 * 1024;

/** SHA-256 of a file, streamed (constant memory), lowercase hex. */
export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path, { highWaterMark: FILE_IO_CHUNK_BYTES }), h);
  return h.digest('hex');
}

/** A SHA-256 in progress over the first `bytes` bytes of a file (none: a fresh
 * one, the file not read), for a transfer that resumes at `bytes` and hashes
 * the rest as it streams (`hashingTap`): each byte is hashed once, while it
 * passes, instead of in a second pass over the finished file. */
export async function sha256OfPrefix(path: string, bytes: number): Promise<Hash> {
  const h = createHash('sha256');
  if (bytes <= 0) return h;
  let read = 0;
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1, highWaterMark: FILE_IO_CHUNK_BYTES })) {
    h.update(chunk as Buffer);
    read += (chunk as Buffer).length;
  }
  if (read !== bytes) throw new Error(`${path} has ${read} bytes, fewer than the ${bytes} to resume from`);
  return h;
}

/** A pass-through stage that feeds every chunk to `hash` on its way. */
export function hashingTap(hash: Hash): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
}

/** Bytes of entries per catalogue frame: well under MAX_CONTROL_FRAME_BYTES
 * (an entry is at most ≈ 600 bytes of JSON). */
export const CATALOGUE_FRAME_BUDGET = 64 * 1024;

/** Catalogue entries as `files` messages that each fit one control frame. With
 * `full` (the whole catalogue) the first says `full: true` (replace your
 * view), the rest are additions, and there is always one message, even for an
 * empty catalogue. A catalogue keeps tombstones, so it grows with churn; one
 * frame would stop at ≈ 1,000 entries. */
export function catalogueMessages(
  entries: readonly FileEntry[],
  budget = CATALOGUE_FRAME_BUDGET,
  full = true,
): { type: 'files'; full: boolean; entries: FileEntry[] }[] {
  const out: { type: 'files'; full: boolean; entries: FileEntry[] }[] = [];
  let chunk: FileEntry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const n = JSON.stringify(e).length + 1;
    if (chunk.length > 0 && bytes + n > budget) {
      out.push({ type: 'files', full: full && out.length === 0, entries: chunk });
      chunk = [];
      bytes = 0;
    }
    chunk.push(e);
    bytes += n;
  }
  if (chunk.length > 0 || (full && out.length === 0)) out.push({ type: 'files', full: full && out.length === 0, entries: chunk });
  return out;
}
