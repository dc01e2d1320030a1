/**
 * What `info --output=json` prints for one image, with qemu-img's own key
 * names (QEMU 7.2's ImageInfo), so the CLI serialises it as it is.
 */
export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

export interface FormatSpecific {
  type: string;
  data: Record<string, unknown>;
}

export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  encrypted?: boolean;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific'?: FormatSpecific;
}

/** The part of ImageInfo only the format driver knows. */
export interface DriverInfo {
  clusterSize?: number;
  encrypted?: boolean;
  dirty?: boolean;
  snapshots?: SnapshotInfo[];
  formatSpecific?: FormatSpecific;
}
