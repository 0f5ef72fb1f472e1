/**
 * Certificate renewal over the authenticated session, before two thirds of the
 * certificate's lifetime has passed; the new certificate is used for the next
 * session at once, with no restart.
 */
import type { RenewResponse } from '@ztm/proto';
import { Paths } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { requestJson } from '../session/h2-json.js';
import { type AgentIdentity, certificateTimes, saveCertificate } from './identity-store.js';
import { createCsrPem } from './keys.js';

const RETRY_MS = 30_000;

export class CertificateRenewer {
  #timer: NodeJS.Timeout | undefined;
  #identity: AgentIdentity;
  readonly #client: HubClient;
  readonly #dataDir: string | undefined;
  readonly #log: Logger;
  #stopped = false;

  constructor(identity: AgentIdentity, client: HubClient, dataDir: string | undefined, log: Logger) {
    this.#identity = identity;
    this.#client = client;
    this.#dataDir = dataDir;
    this.#log = log;
  }

  get identity(): AgentIdentity {
    return this.#identity;
  }

  /** When renewal is due: two thirds into the certificate's lifetime. */
  static dueAt(certPem: string): number {
    const { notBefore, notAfter } = certificateTimes(certPem);
    return notBefore + Math.floor(((notAfter - notBefore) * 2) / 3);
  }

  start(): void {
    this.#schedule(Math.max(0, CertificateRenewer.dueAt(this.#identity.certPem) - Date.now()));
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    // setTimeout holds at most ~24.8 days; re-arm in steps for longer waits.
    const step = Math.min(delayMs, 2 ** 31 - 1);
    this.#timer = setTimeout(() => (step < delayMs ? this.#schedule(delayMs - step) : void this.#renew()), step);
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    const session = this.#client.session;
    if (!session || this.#client.state !== 'online') return this.#schedule(Math.min(RETRY_MS / 10, 1000));
    try {
      const csr = await createCsrPem(this.#identity.keyPem, this.#identity.endpoint);
      const out = await requestJson<RenewResponse>(session, 'POST', Paths.renew, { csr });
      if (this.#dataDir) saveCertificate(this.#dataDir, out.certificate);
      this.#identity = { ...this.#identity, certPem: out.certificate };
      this.#log.info({ certExpires: out.certExpires }, 'certificate renewed');
      this.#client.useIdentity(this.#identity);
      this.start();
    } catch (err) {
      // Retry well before expiry: at most 30 s, at most a quarter of what is left.
      const left = certificateTimes(this.#identity.certPem).notAfter - Date.now();
      const retry = Math.max(250, Math.min(RETRY_MS, Math.floor(left / 4)));
      this.#log.warn({ reason: (err as Error).message, retryMs: retry }, 'certificate renewal failed; will retry');
      this.#schedule(retry);
    }
  }
}
