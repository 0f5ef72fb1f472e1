/**
 * Control-stream framing: each frame is a 4-byte big-endian length followed by
 * that many bytes of UTF-8 JSON. The decoder refuses a length above its limit
 * before buffering the body, so a peer cannot make us allocate without bound.
 */
import { ErrorCodes, ZtmError } from './errors.js';
import { MAX_CONTROL_FRAME_BYTES } from './limits.js';

export const FRAME_HEADER_BYTES = 4;

export function encodeFrame(message: unknown, maxBytes = MAX_CONTROL_FRAME_BYTES): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length > maxBytes) {
    throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `frame of ${body.length} bytes exceeds ${maxBytes}`);
  }
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

/** Incremental decoder: push chunks, get whole decoded values back. After it
 * throws, the stream is unusable and must be closed. */
export class FrameDecoder {
  readonly #maxBytes: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #failed = false;

  constructor(maxBytes = MAX_CONTROL_FRAME_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Bytes held waiting for the rest of a frame. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): unknown[] {
    if (this.#failed) throw new ZtmError(ErrorCodes.BAD_FRAME, 'decoder already failed');
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.#buffered < FRAME_HEADER_BYTES) break;
      const head = this.#peek(FRAME_HEADER_BYTES);
      const length = head.readUInt32BE(0);
      if (length > this.#maxBytes) {
        this.#failed = true;
        throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `frame of ${length} bytes exceeds ${this.#maxBytes}`);
      }
      if (this.#buffered < FRAME_HEADER_BYTES + length) break;
      const all = this.#take(FRAME_HEADER_BYTES + length);
      const body = all.subarray(FRAME_HEADER_BYTES);
      try {
        out.push(JSON.parse(body.toString('utf8')));
      } catch (err) {
        this.#failed = true;
        throw new ZtmError(ErrorCodes.BAD_FRAME, 'frame is not valid JSON', { cause: err });
      }
    }
    return out;
  }

  /** Call at end of stream: leftover bytes mean a truncated frame. */
  end(): void {
    if (this.#buffered > 0) {
      this.#failed = true;
      throw new ZtmError(ErrorCodes.BAD_FRAME, `stream ended inside a frame (${this.#buffered} bytes left)`);
    }
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.#chunks);
    this.#chunks = [joined];
    return joined.subarray(0, n);
  }

  #take(n: number): Buffer {
    let first = this.#chunks[0] as Buffer;
    if (first.length < n) {
      first = Buffer.concat(this.#chunks);
      this.#chunks = [first];
    }
    const taken = first.subarray(0, n);
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return taken;
  }
}
