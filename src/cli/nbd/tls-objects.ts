/**
 * The --object types only `qimg serve` uses: tls-creds-x509, tls-creds-psk
 * (credentials in a directory, as qemu reads them) and authz-simple (one
 * allowed identity). Other types go to the shared ObjectStore.
 */
import { parseOptions, type NbdTlsCredentials } from '../../node.js';
import { CliError } from '../common.js';

const TLS_TYPES = new Set(['tls-creds-x509', 'tls-creds-psk', 'authz-simple']);

interface TlsCredsObject {
  type: 'x509' | 'psk';
  dir: string;
  verifyPeer: boolean;
  endpoint: string;
}

export class TlsObjects {
  private readonly creds = new Map<string, TlsCredsObject>();
  private readonly authz = new Map<string, string>();

  /** Takes the object if it is one of ours; false: not a TLS object. */
  add(text: string): boolean {
    if (text.startsWith('{')) return false;
    let props: Map<string, string>;
    try {
      props = new Map(parseOptions(text, { dialect: 'keyval', impliedKey: 'qom-type' }).entries);
    } catch {
      return false;
    }
    const type = props.get('qom-type');
    if (type === undefined || !TLS_TYPES.has(type)) return false;
    const id = props.get('id');
    if (id === undefined) throw new CliError("Parameter 'id' is missing");
    const allowed = type === 'authz-simple' ? ['identity', 'loaded'] : ['dir', 'endpoint', 'verify-peer', 'priority', 'username', 'sanity-check', 'loaded'];
    for (const k of props.keys()) if (k !== 'qom-type' && k !== 'id' && !allowed.includes(k)) throw new CliError(`Property '${type}.${k}' not found`);
    if (this.creds.has(id) || this.authz.has(id)) throw new CliError(`attempt to add duplicate property '${id}' to object (type 'container')`);
    if (type === 'authz-simple') {
      const identity = props.get('identity');
      if (identity === undefined) throw new CliError("Parameter 'identity' is missing");
      this.authz.set(id, identity);
      return true;
    }
    const endpoint = props.get('endpoint') ?? 'client';
    if (endpoint !== 'client' && endpoint !== 'server') throw new CliError(`Parameter 'endpoint' does not accept value '${endpoint}'`);
    const dir = props.get('dir');
    if (dir === undefined) throw new CliError('Missing \'dir\' property value');
    const vp = props.get('verify-peer') ?? 'on';
    if (!['on', 'off', 'yes', 'no', 'true', 'false'].includes(vp)) throw new CliError(`Parameter 'verify-peer' expects 'on' or 'off'`);
    this.creds.set(id, { type: type === 'tls-creds-x509' ? 'x509' : 'psk', dir, endpoint, verifyPeer: ['on', 'yes', 'true'].includes(vp) });
    return true;
  }

  /** The credentials --tls-creds (and --tls-authz) name, with qemu-nbd's messages. */
  resolve(credsId: string, authzId: string | undefined): NbdTlsCredentials {
    const c = this.creds.get(credsId);
    if (!c) throw new CliError(`No TLS credentials with id '${credsId}'`);
    if (c.endpoint !== 'server') throw new CliError('Expecting TLS credentials with a server endpoint');
    let identity: string | undefined;
    if (authzId !== undefined) {
      identity = this.authz.get(authzId);
      if (identity === undefined) throw new CliError(`No authorization object with id '${authzId}'`);
    }
    if (c.type === 'x509') return { kind: 'x509', dir: c.dir, verifyPeer: c.verifyPeer, authzIdentity: identity };
    return { kind: 'psk', dir: c.dir, authzIdentity: identity };
  }
}
