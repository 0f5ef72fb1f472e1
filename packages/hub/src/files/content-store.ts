/**
 * Content-addressed store on the hub's disk: DATA/content/<sha256> holds whole,
 * verified files; DATA/content/partial/<sha256> holds uploads in progress, so
 * an interrupted upload resumes at the byte it reached. Nothing is held in
 * memory beyond stream buffers.
 */
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ErrorCodes, FILE_IO_CHUNK_BYTES, SHA256_HEX, ZtmError, sha256OfPrefix } from '@ztm/proto';
import { freeBytes, isStorageErrno, storageProblem } from '../registry/storage.js';

export class ContentStore {
  readonly #dir: string;
  readonly #partial: string;

  constructor(dir: string) {
    this.#dir = dir;
    this.#partial = join(dir, 'partial');
    mkdirSync(this.#partial, { recursive: true, mode: 0o700 });
  }

  #check(sha256: string): void {
    if (!SHA256_HEX.test(sha256)) throw new ZtmError(ErrorCodes.BAD_REQUEST, 'content id must be a lowercase hex SHA-256');
  }

  path(sha256: string): string {
    this.#check(sha256);
    return join(this.#dir, sha256);
  }

  has(sha256: string): boolean {
    return existsSync(this.path(sha256));
  }

  size(sha256: string): number {
    return statSync(this.path(sha256)).size;
  }

  /** Bytes of an upload in progress (0 if none). */
  received(sha256: string): number {
    this.#check(sha256);
    const p = join(this.#partial, sha256);
    return existsSync(p) ? statSync(p).size : 0;
  }

  /** A write the disk refused, as an error that says why. The partial upload
   * is dropped: on a full disk it is what fills it. */
  #refused(p: string, err: unknown): ZtmError {
    try {
      rmSync(p, { force: true });
    } catch {}
    const code = (err as NodeJS.ErrnoException).code;
    const why = storageProblem([p, this.#partial, this.#dir], code);
    const what = code === 'ENOSPC' || code === 'EDQUOT' ? 'is full' : 'is not writable';
    return new ZtmError(ErrorCodes.STORAGE, `the hub's file store ${what}: ${why}; upload discarded`, { cause: err });
  }

  /** Append `body` at `offset` to the partial upload; when it reaches `size`,
   * verify the SHA-256 of the whole (hashed as it arrived) and move it into
   * the store. The body is never destroyed here, so the caller can still
   * answer with an error. */
  async append(sha256: string, offset: number, size: number, body: Readable, maxBytes: number): Promise<{ complete: boolean; received: number }> {
    this.#check(sha256);
    if (this.has(sha256)) {
      body.resume();
      return { complete: true, received: size };
    }
    if (size > maxBytes) throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `file of ${size} bytes exceeds the hub's limit of ${maxBytes}`);
    const have = this.received(sha256);
    if (offset !== have) throw new ZtmError(ErrorCodes.BAD_REQUEST, `upload must continue at byte ${have}, not ${offset}`, { details: { received: have } });
    const free = freeBytes(this.#partial);
    if (size - have > free) {
      throw new ZtmError(ErrorCodes.STORAGE, `not enough space on the hub: the upload needs ${size - have} more bytes, its file store has ${free} bytes free`);
    }
    const p = join(this.#partial, sha256);
    // Verified as it streams (after the bytes already here, for a resumed
    // upload): the finished file is not read a second time.
    const hash = await sha256OfPrefix(p, have);
    let written = have;
    const guard = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        written += chunk.length;
        if (written > size) return cb(new ZtmError(ErrorCodes.BAD_REQUEST, `upload is longer than its declared ${size} bytes`));
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    // pipeline() destroys every stream on an error: keep the body (the HTTP/2
    // stream) out of it, or no answer could be sent. A body that aborts
    // (stream reset) ends the copy as an error.
    const copy = new PassThrough();
    const aborted = () => {
      if (!body.readableEnded) copy.destroy(new Error('upload aborted by the sender'));
    };
    body.once('close', aborted);
    body.pipe(copy);
    if (body.destroyed) aborted();
    try {
      await pipeline(copy, guard, createWriteStream(p, { flags: 'a', mode: 0o600, highWaterMark: FILE_IO_CHUNK_BYTES }));
    } catch (err) {
      if (err instanceof ZtmError) {
        rmSync(p, { force: true });
        throw err;
      }
      if (isStorageErrno(err)) throw this.#refused(p, err);
      // What arrived is kept: the next attempt resumes from it.
      return { complete: false, received: this.received(sha256) };
    } finally {
      body.off('close', aborted);
      body.unpipe(copy);
    }
    if (written < size) return { complete: false, received: written };
    const actual = hash.digest('hex');
    if (actual !== sha256) {
      unlinkSync(p);
      throw new ZtmError(ErrorCodes.BAD_REQUEST, `uploaded bytes hash to ${actual}, not ${sha256}; upload discarded`);
    }
    try {
      renameSync(p, this.path(sha256));
    } catch (err) {
      if (isStorageErrno(err)) throw this.#refused(p, err);
      throw err;
    }
    return { complete: true, received: size };
  }

  read(sha256: string, offset: number): Readable {
    return createReadStream(this.path(sha256), { start: offset, highWaterMark: FILE_IO_CHUNK_BYTES });
  }

  remove(sha256: string): void {
    if (this.has(sha256)) unlinkSync(this.path(sha256));
  }
}
