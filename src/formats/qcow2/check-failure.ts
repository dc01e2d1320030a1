/** An errno-style failure: the check stops and qemu-img prints "Check failed: <text>". */
export class CheckFailure extends Error {
  constructor(readonly strerror: string) {
    super(strerror);
  }
}
