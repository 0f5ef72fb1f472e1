/**
 * Where the files of a hub's data directory are. Apart from data-dir.ts (which
 * loads the CA and the registry) so that the CLI's commands for a running hub
 * start without loading those.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ADMIN_SOCKET_NAME } from '@ztm/proto';

export const defaultHubDataDir = (): string => process.env.ZTM_DATA || join(homedir(), '.ztm', 'hub');

export function hubPaths(dir: string) {
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    hubCert: join(dir, 'hub.crt'),
    hubKey: join(dir, 'hub.key'),
    db: join(dir, 'hub.db'),
    adminSocket: join(dir, ADMIN_SOCKET_NAME),
    content: join(dir, 'content'),
  };
}
