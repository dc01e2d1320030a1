/**
 * One progress for the several steps of an amendment (upgrade, refcount
 * width, downgrade), combined as qemu combines them: the steps done count
 * with their full size, the current one as it reports, and the steps still
 * to come are projected to be as large as the average so far.
 */
export type ProgressSink = (done: number, total: number) => void;

export type AmendStep = 'upgrade' | 'refcount-width' | 'downgrade';

export class AmendProgress {
  private completedWork = 0;
  private stepsDone = 0;
  private lastStep: AmendStep | undefined;
  private lastWork = 0;

  constructor(
    private readonly steps: number,
    private readonly sink: ProgressSink | undefined,
  ) {}

  /** The sink for step `step`'s own (done, total) reports. */
  step(step: AmendStep): ProgressSink {
    return (done, total) => this.report(step, done, total);
  }

  private report(step: AmendStep, done: number, total: number): void {
    if (step !== this.lastStep) {
      if (this.lastStep !== undefined) {
        this.completedWork += this.lastWork;
        this.stepsDone++;
      }
      this.lastStep = step;
    }
    this.lastWork = total;
    const current = this.completedWork + total;
    const projected = Math.trunc((current * (this.steps - this.stepsDone - 1)) / (this.stepsDone + 1));
    this.sink?.(this.completedWork + done, current + projected);
  }
}
