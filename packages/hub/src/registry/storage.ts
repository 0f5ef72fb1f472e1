/**
 * Why the hub's disk refused a write, in words an operator can act on. Shared
 * by the registry (SQLite) and the file content store.
 */
import { accessSync, constants, statfsSync } from 'node:fs';
import { dirname } from 'node:path';

/** errno codes of a write the disk refused (as opposed to a peer going away). */
const STORAGE_ERRNO = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EPERM', 'EACCES', 'EIO', 'EFBIG']);

export function isStorageErrno(err: unknown): boolean {
  return STORAGE_ERRNO.has(String((err as NodeJS.ErrnoException | undefined)?.code));
}

/** Bytes an unprivileged writer may still use on the filesystem holding `path`. */
export function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

const full = 'no space left on the device (ENOSPC)';

/** `paths`: the files that could not be written (the first one's directory
 * is checked for space); `code`: errno or SQLite code if known. */
export function storageProblem(paths: readonly string[], code?: string): string {
  if (code === 'ENOSPC' || code === 'SQLITE_FULL') return full;
  if (code === 'EDQUOT') return 'disk quota exceeded (EDQUOT)';
  if (code === 'SQLITE_BUSY') return 'another process holds a lock on it (SQLITE_BUSY)';
  for (const path of paths) {
    try {
      accessSync(path, constants.W_OK);
    } catch (err) {
      const errno = (err as NodeJS.ErrnoException).code;
      if (errno === 'EROFS') return 'read-only file system (EROFS)';
      if (errno === 'EPERM') return 'writing is not permitted, e.g. the file is immutable (EPERM)';
      if (errno === 'EACCES') return 'permission denied (EACCES)';
    }
  }
  try {
    if (paths[0] && freeBytes(dirname(paths[0])) === 0) return full;
  } catch {}
  if (code === 'EROFS') return 'read-only file system (EROFS)';
  if (code === 'EPERM' || code === 'EACCES') return `writing is not permitted (${code})`;
  return `the disk refused the write (${code ?? 'I/O error'})`;
}
