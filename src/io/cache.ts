/**
 * qemu's cache modes (-t/-T), reduced to what qimg can honour: their
 * durability. Page-cache bypass (none, directsync) is a performance matter
 * with no effect on what is read or written, so it is not imitated.
 */
export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

/** bdrv_parse_cache_mode: "off" is an old name of "none". */
export function parseCacheMode(text: string): CacheMode | undefined {
  if (text === 'off') return 'none';
  return text === 'none' || text === 'writeback' || text === 'writethrough' || text === 'directsync' || text === 'unsafe' ? text : undefined;
}

/** unsafe: flush requests are dropped. */
export const dropsFlushes = (mode: CacheMode): boolean => mode === 'unsafe';

/** writethrough, directsync: a write completes only once it is flushed to stable storage. */
export const flushesEachWrite = (mode: CacheMode): boolean => mode === 'writethrough' || mode === 'directsync';
