/**
 * Content-addressed store on the hub's disk: DATA/content/<sha256> holds whole,
 * verified files; DATA/content/partial/<sha256> holds uploads in progress, so
 * an interrupted upload resumes at the byte it reached. Nothing is held in
 * memory beyond stream buffers.
 */
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ErrorCodes, SHA256_HEX, ZtmError, sha256OfFile } from '@ztm/proto';

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

  /** Append `body` at `offset` to the partial upload; when it reaches `size`,
   * verify the SHA-256 of the whole and move it into the store. */
  async append(sha256: string, offset: number, size: number, body: Readable, maxBytes: number): Promise<{ complete: boolean; received: number }> {
    this.#check(sha256);
    if (this.has(sha256)) {
      body.resume();
      return { complete: true, received: size };
    }
    if (size > maxBytes) throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `file of ${size} bytes exceeds the hub's limit of ${maxBytes}`);
    const have = this.received(sha256);
    if (offset !== have) throw new ZtmError(ErrorCodes.BAD_REQUEST, `upload must continue at byte ${have}, not ${offset}`, { details: { received: have } });
    const p = join(this.#partial, sha256);
    let written = have;
    const guard = new (await import('node:stream')).Transform({
      transform(chunk: Buffer, _enc, cb) {
        written += chunk.length;
        if (written > size) cb(new ZtmError(ErrorCodes.BAD_REQUEST, `upload is longer than its declared ${size} bytes`));
        else cb(null, chunk);
      },
    });
    try {
      await pipeline(body, guard, createWriteStream(p, { flags: 'a', mode: 0o600 }));
    } catch (err) {
      // What arrived is kept: the next attempt resumes from it.
      if (err instanceof ZtmError) {
        unlinkSync(p);
        throw err;
      }
      return { complete: false, received: this.received(sha256) };
    }
    if (written < size) return { complete: false, received: written };
    const actual = await sha256OfFile(p);
    if (actual !== sha256) {
      unlinkSync(p);
      throw new ZtmError(ErrorCodes.BAD_REQUEST, `uploaded bytes hash to ${actual}, not ${sha256}; upload discarded`);
    }
    renameSync(p, this.path(sha256));
    return { complete: true, received: size };
  }

  read(sha256: string, offset: number): Readable {
    return createReadStream(this.path(sha256), { start: offset, highWaterMark: 1024 * 1024 });
  }

  remove(sha256: string): void {
    if (this.has(sha256)) unlinkSync(this.path(sha256));
  }
}
