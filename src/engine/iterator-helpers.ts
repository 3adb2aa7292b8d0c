// ES2025 iterator helpers, which jax-js uses (einsum, attention) and Node 20 lacks.
// Installed only where missing, so on newer runtimes this does nothing.
type Iter = Iterator<unknown> & { [k: string]: unknown };

function* mapGen(it: Iterator<unknown>, fn: (v: unknown, i: number) => unknown) {
  let i = 0;
  for (let r = it.next(); !r.done; r = it.next()) yield fn(r.value, i++);
}
function* filterGen(it: Iterator<unknown>, fn: (v: unknown, i: number) => unknown) {
  let i = 0;
  for (let r = it.next(); !r.done; r = it.next()) if (fn(r.value, i++)) yield r.value;
}
function* flatMapGen(it: Iterator<unknown>, fn: (v: unknown, i: number) => Iterable<unknown>) {
  let i = 0;
  for (let r = it.next(); !r.done; r = it.next()) yield* fn(r.value, i++);
}
function* takeGen(it: Iterator<unknown>, n: number) {
  for (let k = 0; k < n; k++) {
    const r = it.next();
    if (r.done) return;
    yield r.value;
  }
}
function* dropGen(it: Iterator<unknown>, n: number) {
  for (let k = 0; k < n; k++) if (it.next().done) return;
  for (let r = it.next(); !r.done; r = it.next()) yield r.value;
}

export function installIteratorHelpers(): void {
  const proto = Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())) as Record<string, unknown>;
  const define = (name: string, fn: (this: Iter, ...a: never[]) => unknown) => {
    if (typeof proto[name] !== 'function') {
      Object.defineProperty(proto, name, { value: fn, writable: true, configurable: true });
    }
  };
  define('map', function (fn: (v: unknown, i: number) => unknown) { return mapGen(this, fn); });
  define('filter', function (fn: (v: unknown, i: number) => unknown) { return filterGen(this, fn); });
  define('flatMap', function (fn: (v: unknown, i: number) => Iterable<unknown>) { return flatMapGen(this, fn); });
  define('take', function (n: number) { return takeGen(this, n); });
  define('drop', function (n: number) { return dropGen(this, n); });
  define('toArray', function () { return [...mapGen(this, (v) => v)]; });
  define('forEach', function (fn: (v: unknown, i: number) => void) { let i = 0; for (let r = this.next(); !r.done; r = this.next()) fn(r.value, i++); });
  define('some', function (fn: (v: unknown, i: number) => unknown) { let i = 0; for (let r = this.next(); !r.done; r = this.next()) if (fn(r.value, i++)) return true; return false; });
  define('every', function (fn: (v: unknown, i: number) => unknown) { let i = 0; for (let r = this.next(); !r.done; r = this.next()) if (!fn(r.value, i++)) return false; return true; });
  define('find', function (fn: (v: unknown, i: number) => unknown) { let i = 0; for (let r = this.next(); !r.done; r = this.next()) if (fn(r.value, i++)) return r.value; return undefined; });
  define('reduce', function (fn: (acc: unknown, v: unknown, i: number) => unknown, ...init: unknown[]) {
    let i = 0;
    let acc: unknown;
    if (init.length > 0) acc = init[0];
    else {
      const first = this.next();
      if (first.done) throw new TypeError('Reduce of empty iterator with no initial value');
      acc = first.value;
      i = 1;
    }
    for (let r = this.next(); !r.done; r = this.next()) acc = fn(acc, r.value, i++);
    return acc;
  });
}
