// A one-line progress bar on a terminal; periodic plain lines when stderr is not a TTY (CI, logs).
/**
 * Seconds left when `done` of `total` are done after `elapsed` seconds, counting only the work of
 * this run (it started at `from`: a resumed run's earlier steps took no time here), and never
 * more than what is left of a time limit of `limit` seconds.
 */
export function remainingSeconds(elapsed: number, done: number, total: number, from = 0, limit = Infinity): number {
  const rate = done > from ? elapsed / (done - from) : Infinity;
  const byWork = done >= total ? 0 : rate * (total - done);
  return Math.max(0, Math.min(byWork, limit - elapsed));
}

export class Progress {
  readonly #tty = Boolean(process.stderr.isTTY);
  #lastPrint = 0;
  #start = performance.now();

  /** `from`: where this run starts counting (a resumed run's step); `limit`: its time limit in seconds. */
  constructor(
    readonly label: string,
    public total: number,
    readonly opts: { from?: number; limit?: number } = {},
  ) {}

  update(done: number, extra = ''): void {
    const now = performance.now();
    const finished = done >= this.total;
    if (!finished && now - this.#lastPrint < (this.#tty ? 100 : 10_000)) return;
    this.#lastPrint = now;
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (now - this.#start) / 1000;
    const eta = remainingSeconds(elapsed, done, this.total, this.opts.from, this.opts.limit);
    const width = 24;
    const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '░');
    const line = `${this.label} ${bar} ${done}/${this.total} ${extra} [${fmtTime(elapsed)} < ${fmtTime(eta)}]`;
    if (this.#tty) process.stderr.write(`\r\x1b[2K${line}${finished ? '\n' : ''}`);
    else process.stderr.write(line + '\n');
  }

  /** Prints a line above the bar. */
  note(text: string): void {
    process.stderr.write(this.#tty ? `\r\x1b[2K${text}\n` : `${text}\n`);
    this.#lastPrint = 0;
  }
}

export function fmtTime(sec: number): string {
  if (!Number.isFinite(sec)) return '--:--';
  const s = Math.max(0, Math.round(sec));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}
