/**
 * The block driver names QEMU 7.2's qemu-img knows (its help's "Supported
 * formats"). qemu-img accepts any of them as a backing format it only records
 * (rebase -u), even those qimg cannot open.
 */
const QEMU_DRIVER_NAMES: ReadonlySet<string> = new Set(
  (
    'blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file ftp ftps gluster ' +
    'host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels preallocate qcow qcow2 ' +
    'qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat'
  ).split(' '),
);

/** Whether qemu-img would take `name` as a driver name. */
export function isQemuDriverName(name: string): boolean {
  return QEMU_DRIVER_NAMES.has(name);
}
