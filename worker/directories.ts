// One Directory (LDAP pool) per LDAP profile, rebuilt when its profile changes.
import { Directory, type DirectoryOptions, type UnavailableInfo } from '../shared/directory/client.ts';
import type { LdapProfile } from '../shared/config/schemas.ts';

/** Sessions that already hold a replaced Directory get this long to finish with it. */
const RETIRE_AFTER_MS = 35_000;

export class DirectoryRegistry {
  private readonly current = new Map<string, { json: string; directory: Directory }>();

  constructor(
    private readonly onQuery: NonNullable<DirectoryOptions['onQuery']>,
    /** A profile's directory could not answer (SPEC §2.1: the worker logs its reason at warn). */
    private readonly onUnavailable: (profile: string, info: UnavailableInfo) => void,
  ) {}

  get(name: string): Directory | null {
    return this.current.get(name)?.directory ?? null;
  }

  apply(profiles: readonly LdapProfile[]): void {
    const wanted = new Map(profiles.map((p) => [p.name, p]));
    for (const [name, entry] of this.current) {
      const p = wanted.get(name);
      if (!p || JSON.stringify(p) !== entry.json) {
        this.current.delete(name);
        retire(entry.directory);
      }
    }
    for (const [name, p] of wanted) {
      if (!this.current.has(name)) {
        this.current.set(name, { json: JSON.stringify(p), directory: new Directory(p, { onQuery: this.onQuery, onUnavailable: (info) => this.onUnavailable(name, info) }) });
      }
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.current.values()].map((e) => e.directory.close()));
    this.current.clear();
  }
}

function retire(d: Directory): void {
  setTimeout(() => void d.close().catch(() => undefined), RETIRE_AFTER_MS).unref();
}
