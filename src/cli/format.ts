/** Number and size formatting exactly as QEMU's C helpers print them. */

/** C printf("%.{p}g"). */
export function formatG(v: number, p = 6): string {
  if (p === 0) p = 1;
  if (v === 0) return '0';
  if (!Number.isFinite(v)) return Number.isNaN(v) ? 'nan' : v > 0 ? 'inf' : '-inf';
  const exp = v.toExponential(p - 1); // rounding decides the exponent, as in C
  const [mant, e] = exp.split('e') as [string, string];
  const x = Number(e);
  if (x < -4 || x >= p) {
    const m = stripZeros(mant);
    const sign = x < 0 ? '-' : '+';
    return `${m}e${sign}${String(Math.abs(x)).padStart(2, '0')}`;
  }
  return stripZeros(toFixedC(v, Math.max(0, p - 1 - x)));
}

function stripZeros(s: string): string {
  if (!s.includes('.')) return s;
  return s.replace(/0+$/, '').replace(/\.$/, '');
}

const SIZE_SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** util/cutils.c size_to_str: "%0.3g %sB", switching unit once the integer part reaches 1000. */
export function sizeToStr(val: number): string {
  const x = val / (1000 / 1024);
  const e = x === 0 ? 0 : Math.floor(Math.log2(x)) + 1; // frexp's exponent
  const i = Math.max(0, Math.trunc((e - 1) / 10));
  const div = 2 ** (i * 10);
  return `${formatG(val / div, 3)} ${SIZE_SUFFIXES[i]}B`;
}

/** qemu-io's cvtstr: "%.3f" with a binary unit, ".000" collapsed. */
export function cvtstr(value: number): string {
  const units: [number, string][] = [
    [2 ** 60, ' EiB'],
    [2 ** 50, ' PiB'],
    [2 ** 40, ' TiB'],
    [2 ** 30, ' GiB'],
    [2 ** 20, ' MiB'],
    [2 ** 10, ' KiB'],
  ];
  let str: string;
  let suffix: string;
  const unit = units.find(([u]) => value >= u);
  if (unit) {
    str = toFixedC(value / unit[0], 3);
    suffix = unit[1];
  } else {
    str = toFixedC(value, 6);
    suffix = ' bytes';
  }
  const trim = str.indexOf('.000');
  return trim >= 0 ? str.slice(0, trim) + suffix : str + suffix;
}

/** qemu-io's timestr for an elapsed time in seconds (no fixed-format flags). */
export function timestr(seconds: number, verbose = false): string {
  const sec = Math.floor(seconds);
  const frac = seconds - sec;
  if (verbose || sec) {
    const h = Math.floor(sec / 3600);
    const m = Math.floor((sec % 3600) / 60);
    const s = (sec % 60) + frac;
    return `${h}:${String(m).padStart(2, '0')}:${toFixedC(s, 2).padStart(5, '0')}`;
  }
  return `${toFixedC(frac, 2).padStart(5, '0')} sec`;
}

/** C "%#x": 0 prints as "0", anything else with a 0x prefix. */
export const hashHex = (n: number): string => (n === 0 ? '0' : '0x' + n.toString(16));

/** C printf("%.{d}f"): like toFixed, but exact ties round to even as glibc does. */
export function toFixedC(v: number, d: number): string {
  if (Number.isFinite(v) && Math.abs(v) < 1e21 && d < 100) {
    // toFixed(100) is the exact decimal value of the double: a tie is "5" then zeros.
    const exact = Math.abs(v).toFixed(100);
    const rest = exact.slice(exact.indexOf('.') + 1 + d);
    if (/^50*$/.test(rest)) {
      const scaled = Math.abs(v) * 10 ** d; // exact: v has few fractional digits
      const lo = Math.floor(scaled);
      const even = lo % 2 === 0 ? lo : lo + 1;
      return (v < 0 ? '-' : '') + (even / 10 ** d).toFixed(d);
    }
  }
  return v.toFixed(d);
}
