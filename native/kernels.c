// starflow-ts native kernels: jax-js's elementwise and reduction kernels evaluated on its own wasm
// memory, vectorised for this machine and split over threads.
//
// src/engine/native-kernels.ts lowers a jax-js kernel into a small register program: one
// instruction per distinct expression node, each a loop over a chunk of lanes that the compiler
// vectorises (-O3 -march=native). Loads are strided views (shape, strides, offset, validity box),
// read run by run along their last axis, so no per-element index arithmetic is done. A reduction
// over many outputs takes outputs as lanes: the instructions that do not vary with the reduced
// index run once per chunk, the others once per reduced index, folded lane by lane. Over few
// outputs it takes the flat (output, reduced) index as lanes and folds each output's run of lanes.
// A fused epilogue then runs over the outputs. Anything the program format cannot say stays on
// jax-js's wasm (the lowering returns null).
//
// Descriptor (Float64Array), written once per kernel by JavaScript; a call writes the pointers:
//   header[16]: 0 magic, 1 main instructions, 2 epilogue instructions, 3 R (reduced size, 1 = none),
//               4 reduce op, 5 reduce type, 6 output byte offset, 7 outputs, 8 views, 9 begin, 10 end,
//               11 registers, 12 main result register, 13 epilogue result register
//   instructions: 8 numbers each (op, type, destination register, operand registers a, b, c, imm,
//               varies with the reduced index), main then epilogue; registers are reused once dead
//               (src/engine/native-kernels.ts allocates them), so a program works in the L1 cache
//   views: VIEW_LEN numbers each (byte base, ndim, offset, masked, reduced (its last axis is the
//          reduced one), shape[8], strides[8], lo[8], hi[8])
#include <node_api.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"
#include "vector.h"

#define MAGIC 20261203
#define HEADER 16
#define INSTR 8
#define MAXDIM 8
#define VIEW_LEN (5 + 4 * MAXDIM)
#define CH 256
// Registers are CH lanes, spaced so that no two sit a multiple of 4 KiB apart (loads and stores
// of different registers would then falsely depend on each other).
#define REG (CH + 16)

enum { T_F32 = 0, T_I32 = 1, T_U32 = 2, T_BOOL = 3 };
enum {
  OP_CONST, OP_GIDX, OP_RIDX, OP_ACC, OP_LOAD,
  OP_ADD, OP_SUB, OP_MUL, OP_IDIV, OP_MOD, OP_MIN, OP_MAX,
  OP_CMPLT, OP_CMPNE, OP_WHERE, OP_CAST,
  OP_SQRT, OP_RECIP, OP_EXP, OP_LOG, OP_FLOOR, OP_CEIL,
  OP_MULADD, // float a·b + c: one instruction for a Horner step (polynomials halve their register traffic)
  OP_COUNT
};
enum { RED_NONE, RED_ADD, RED_MUL, RED_MIN, RED_MAX };


typedef union {
  float f;
  int32_t i;
  uint32_t u;
} Lane;

typedef struct {
  const uint8_t *base; // byte address of element 0 of the view's buffer
  int ndim;
  int64_t offset;
  int masked, reduced;
  int64_t shape[MAXDIM], strides[MAXDIM], lo[MAXDIM], hi[MAXDIM];
} View;

typedef struct {
  int op, type, dst, a, b, c;
  double imm;
  int varies;
} Instr;

typedef struct {
  const Instr *main; // then the epilogue's, in the same array
  int nmain, nepi, nregs, main_root, epi_root;
  int64_t R;
  int red_op, red_type;
  uint8_t *out;
  const View *views;
} Program;

// ---- exp and log, on whole vectors (GCC vector extensions): bit-level steps that a plain loop
// would not vectorise. Registers hold CH lanes (a multiple of VL), so the lanes past n computed
// here are scratch. ----

static inline vf vsplat(float x) { return (vf){} + x; }
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

static inline vf vexp(vf x) {
  // exp(x) = 2^n · e^r, |r| ≤ ln2/2; Cephes's polynomial for e^r (≈1 ulp).
  const vf hi = vsplat(88.7228317261f), lo = vsplat(-103.9720840454f);
  vf xc = vselect(x > hi, hi, vselect(x < lo, lo, x));
  const vf round = vsplat(12582912.0f); // 1.5·2^23: adding and subtracting rounds to an integer
  vf n = (xc * 1.44269504089f + round) - round;
  vf r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as two factors so that n from −150 to 128 stays representable.
  vi ni = __builtin_convertvector(n, vi);
  vi h = ni >> 1;
  vf y = p * (vf)((h + 127) << 23) * (vf)((ni - h + 127) << 23);
  y = vselect(x > hi, vsplat(INFINITY), y);
  y = vselect(x < lo, vsplat(0.0f), y);
  return vselect(x != x, x, y);
}

static inline vf vlog(vf x) {
  // log(x) = e·ln2 + log(1 + f), 1 + f in [√½, √2); Cephes's polynomial (≈1 ulp).
  vi bits = (vi)x;
  vi sub = (bits & 0x7f800000) == 0; // subnormal (or zero): scale by 2^23 first
  vf xs = vselect(sub, x * 8388608.0f, x);
  vi sb = (vi)xs;
  vi e = ((sb >> 23) & 0xff) - 126 + (sub & -23);
  vf m = (vf)((sb & 0x007fffff) | 0x3f000000); // [0.5, 1)
  vi small = m < 0.707106781186547524f;
  e += small; // small is −1 where true
  vf f = vselect(small, m + m - 1.0f, m - 1.0f);
  vf z = f * f;
  vf y = vsplat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  vf fe = __builtin_convertvector(e, vf);
  y += fe * -2.12194440e-4f;
  y += -0.5f * z;
  vf r = f + y + fe * 0.693359375f;
  r = vselect(x == 0.0f, vsplat(-INFINITY), r);
  r = vselect(x < 0.0f, vsplat(NAN), r);
  r = vselect(x == INFINITY, vsplat(INFINITY), r);
  return vselect(x != x, x, r);
}

#define VLOOP(fn)                                   \
  for (int j = 0; j < n; j += VL) {                 \
    vf v;                                           \
    memcpy(&v, a + j, sizeof v);                    \
    v = fn(v);                                      \
    memcpy(r + j, &v, sizeof v);                    \
  }

// wasm's f32.min/max: NaN if either is NaN.
static inline float min_f(float a, float b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }
static inline float max_f(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }

// wasm's saturating truncations (NaN → 0).
static inline int32_t f2i_sat(float x) {
  return x != x ? 0 : x >= 2147483648.0f ? INT32_MAX : x < -2147483648.0f ? INT32_MIN : (int32_t)x;
}
static inline uint32_t f2u_sat(float x) {
  return x != x ? 0 : x >= 4294967296.0f ? UINT32_MAX : x <= 0.0f ? 0 : (uint32_t)x;
}

// ---- loads: the first `ndim` axes of a view (shifted by `shift` elements) read over flat
// indices [start, start + n) of those axes, row-major ----
static void load_axes(const View *v, int ndim, int64_t shift, int64_t start, int n, Lane *restrict dst) {
  const int last = ndim - 1;
  int64_t c[MAXDIM];
  int64_t rest = start;
  for (int k = last; k >= 0; k--) {
    c[k] = rest % v->shape[k];
    rest /= v->shape[k];
  }
  const Lane *src = (const Lane *)v->base;
  const int64_t s = v->strides[last], lo = v->lo[last], hi = v->hi[last];
  // The outer axes' part of the address and validity, kept up to date as the coordinates advance.
  int64_t outer = v->offset + shift;
  int ok = 1;
  for (int k = 0; k < last; k++) {
    outer += c[k] * v->strides[k];
    if (c[k] < v->lo[k] || c[k] >= v->hi[k]) ok = 0;
  }
  int i = 0;
  while (i < n) {
    int64_t run = v->shape[last] - c[last];
    if (run > n - i) run = n - i;
    Lane *restrict d = dst + i;
    if (!ok) {
      for (int64_t j = 0; j < run; j++) d[j].u = 0;
    } else if (!v->masked) {
      const Lane *p = src + outer + c[last] * s;
      if (s == 1)
        for (int64_t j = 0; j < run; j++) d[j] = p[j];
      else if (s == 0) {
        const Lane x = p[0];
        for (int64_t j = 0; j < run; j++) d[j] = x;
      } else
        for (int64_t j = 0; j < run; j++) d[j] = p[j * s];
    } else {
      for (int64_t j = 0; j < run; j++) {
        const int64_t cl = c[last] + j;
        d[j].u = (cl >= lo && cl < hi) ? src[outer + cl * s].u : 0;
      }
    }
    i += (int)run;
    c[last] += run;
    if (c[last] < v->shape[last] || last == 0) continue;
    // Carry into the outer axes.
    c[last] = 0;
    int k = last - 1;
    c[k]++;
    outer += v->strides[k];
    while (k > 0 && c[k] == v->shape[k]) {
      outer -= c[k] * v->strides[k];
      c[k] = 0;
      c[--k]++;
      outer += v->strides[k];
    }
    if (v->masked) {
      ok = 1;
      for (int q = 0; q < last; q++)
        if (c[q] < v->lo[q] || c[q] >= v->hi[q]) ok = 0;
    }
  }
}

// A load in flat mode (r < 0: every axis, the reduced one last) or for one reduced index r (the
// outer axes only, over outputs).
static void load_view(const View *v, int64_t start, int n, int64_t r, Lane *restrict dst) {
  if (r < 0 || !v->reduced) {
    load_axes(v, v->ndim, 0, start, n, dst);
    return;
  }
  const int last = v->ndim - 1;
  if (r < v->lo[last] || r >= v->hi[last]) memset(dst, 0, n * sizeof(Lane));
  else if (last == 0) { // nothing but the reduced axis: the same value in every lane
    const Lane x = ((const Lane *)v->base)[v->offset + r * v->strides[0]];
    for (int j = 0; j < n; j++) dst[j] = x;
  } else
    load_axes(v, last, r * v->strides[last], start, n, dst);
}

// ---- one instruction over n lanes ----
#define LOOP(expr)                          \
  for (int j = 0; j < n; j++) { expr; }

// Instruction `k` (numbered over main then epilogue); `epi`: an epilogue one, whose lanes are
// outputs g0.. rather than flat indices flat0...
// `r` ≥ 0: outputs as lanes at reduced index r; r < 0: flat mode (main) or the epilogue.
static void run_instr(const Program *p, int k, int epi, Lane *regs, int n, int64_t flat0, int64_t g0, int64_t r_index, const Lane *acc) {
  const Instr *in = &p->main[k]; // main and epilogue are one array
  Lane *restrict r = regs + (size_t)in->dst * REG;
  const Lane *restrict a = in->a >= 0 ? regs + (size_t)in->a * REG : NULL;
  const Lane *restrict b = in->b >= 0 ? regs + (size_t)in->b * REG : NULL;
  const Lane *restrict c = in->c >= 0 ? regs + (size_t)in->c * REG : NULL;
  const int t = in->type;
  switch (in->op) {
  case OP_CONST: break; // filled once per call
  case OP_GIDX:
    if (p->R == 1 || epi || r_index >= 0) LOOP(r[j].i = (int32_t)(g0 + j))
    else {
      int64_t g = flat0 / p->R, q = flat0 % p->R;
      for (int j = 0; j < n; j++) {
        r[j].i = (int32_t)g;
        if (++q == p->R) q = 0, g++;
      }
    }
    break;
  case OP_RIDX: {
    if (r_index >= 0) {
      LOOP(r[j].i = (int32_t)r_index)
      break;
    }
    int64_t q = flat0 % p->R;
    for (int j = 0; j < n; j++) {
      r[j].i = (int32_t)q;
      if (++q == p->R) q = 0;
    }
    break;
  }
  case OP_ACC:
    if (acc) memcpy(r, acc, n * sizeof(Lane));
    break;
  case OP_LOAD: load_view(&p->views[(int)in->imm], epi || r_index >= 0 ? g0 : flat0, n, epi ? -1 : r_index, r); break;
  case OP_ADD:
    if (t == T_F32) LOOP(r[j].f = a[j].f + b[j].f)
    else if (t == T_BOOL) LOOP(r[j].u = a[j].u | b[j].u)
    else LOOP(r[j].u = a[j].u + b[j].u)
    break;
  case OP_SUB:
    if (t == T_F32) LOOP(r[j].f = a[j].f - b[j].f)
    else LOOP(r[j].u = a[j].u - b[j].u)
    break;
  case OP_MUL:
    if (t == T_F32) LOOP(r[j].f = a[j].f * b[j].f)
    else if (t == T_BOOL) LOOP(r[j].u = a[j].u & b[j].u)
    else LOOP(r[j].u = a[j].u * b[j].u)
    break;
  case OP_IDIV:
    // Integers through double division, which vectorises: exact for every 32-bit operand
    // (the true quotient is never within half an ulp of the next integer below 2^53).
    if (t == T_F32) LOOP(r[j].f = truncf(a[j].f / b[j].f))
    else if (t == T_U32) LOOP(r[j].u = b[j].u ? (uint32_t)((double)a[j].u / (double)b[j].u) : 0)
    else LOOP(r[j].i = b[j].i ? (int32_t)((double)a[j].i / (double)b[j].i) : 0)
    break;
  case OP_MOD:
    if (t == T_F32) LOOP(r[j].f = a[j].f - truncf(a[j].f / b[j].f) * b[j].f)
    else if (t == T_U32) LOOP(r[j].u = b[j].u ? a[j].u - (uint32_t)((double)a[j].u / (double)b[j].u) * b[j].u : 0)
    else LOOP(r[j].i = b[j].i ? (int32_t)((uint32_t)a[j].i - (uint32_t)(int32_t)((double)a[j].i / (double)b[j].i) * (uint32_t)b[j].i) : 0)
    break;
  case OP_MIN:
    if (t == T_F32) LOOP(r[j].f = min_f(a[j].f, b[j].f))
    else if (t == T_I32) LOOP(r[j].i = a[j].i < b[j].i ? a[j].i : b[j].i)
    else LOOP(r[j].u = a[j].u < b[j].u ? a[j].u : b[j].u)
    break;
  case OP_MAX:
    if (t == T_F32) LOOP(r[j].f = max_f(a[j].f, b[j].f))
    else if (t == T_I32) LOOP(r[j].i = a[j].i > b[j].i ? a[j].i : b[j].i)
    else LOOP(r[j].u = a[j].u > b[j].u ? a[j].u : b[j].u)
    break;
  case OP_CMPLT: // type: the operands'
    if (t == T_F32) LOOP(r[j].u = a[j].f < b[j].f)
    else if (t == T_I32) LOOP(r[j].u = a[j].i < b[j].i)
    else LOOP(r[j].u = a[j].u < b[j].u)
    break;
  case OP_CMPNE:
    if (t == T_F32) LOOP(r[j].u = a[j].f != b[j].f)
    else LOOP(r[j].u = a[j].u != b[j].u)
    break;
  case OP_WHERE: LOOP(r[j].u = a[j].u ? b[j].u : c[j].u) break;
  case OP_MULADD: LOOP(r[j].f = a[j].f * b[j].f + c[j].f) break;
  case OP_CAST: { // type: target; imm: source
    const int from = (int)in->imm;
    if (t == from || (t != T_F32 && t != T_BOOL && from != T_F32)) memcpy(r, a, n * sizeof(Lane));
    else if (t == T_F32 && from == T_U32) LOOP(r[j].f = (float)a[j].u)
    else if (t == T_F32) LOOP(r[j].f = (float)a[j].i)
    else if (t == T_I32) LOOP(r[j].i = f2i_sat(a[j].f))
    else if (t == T_U32) LOOP(r[j].u = f2u_sat(a[j].f))
    else if (from == T_F32) LOOP(r[j].u = a[j].f != 0.0f)
    else LOOP(r[j].u = a[j].u != 0)
    break;
  }
  case OP_SQRT: LOOP(r[j].f = sqrtf(a[j].f)) break;
  case OP_RECIP: LOOP(r[j].f = 1.0f / a[j].f) break;
  case OP_EXP: VLOOP(vexp) break;
  case OP_LOG: VLOOP(vlog) break;
  case OP_FLOOR: LOOP(r[j].f = floorf(a[j].f)) break;
  case OP_CEIL: LOOP(r[j].f = ceilf(a[j].f)) break;
  }
}

static void fill_consts(const Instr *prog, int count, Lane *regs) {
  for (int k = 0; k < count; k++) {
    if (prog[k].op != OP_CONST) continue;
    Lane v;
    if (prog[k].type == T_F32) v.f = (float)prog[k].imm;
    else if (prog[k].type == T_U32) v.u = (uint32_t)prog[k].imm;
    else v.i = (int32_t)prog[k].imm;
    for (int j = 0; j < CH; j++) regs[(size_t)prog[k].dst * REG + j] = v;
  }
}

// The main program's instructions that do (varies = 1) or do not (0) vary with the reduced index.
static void run_main(const Program *p, int varies, Lane *regs, int n, int64_t flat0, int64_t g0, int64_t r) {
  for (int k = 0; k < p->nmain; k++)
    if (p->main[k].varies == varies) run_instr(p, k, 0, regs, n, flat0, g0, r, NULL);
}

static Lane identity(int op, int type) {
  Lane v = {.u = 0};
  if (op == RED_MUL) {
    if (type == T_F32) v.f = 1.0f; else v.u = 1;
  } else if (op == RED_MIN) {
    if (type == T_F32) v.f = INFINITY; else if (type == T_I32) v.i = INT32_MAX; else v.u = type == T_BOOL ? 1 : UINT32_MAX;
  } else if (op == RED_MAX) {
    if (type == T_F32) v.f = -INFINITY; else if (type == T_I32) v.i = INT32_MIN;
  }
  return v;
}

static inline Lane fold(int op, int type, Lane x, Lane y) {
  Lane r;
  if (type == T_F32) {
    r.f = op == RED_ADD ? x.f + y.f : op == RED_MUL ? x.f * y.f : op == RED_MIN ? min_f(x.f, y.f) : max_f(x.f, y.f);
  } else if (type == T_BOOL) {
    r.u = (op == RED_ADD || op == RED_MAX) ? (x.u | y.u) : (x.u & y.u);
  } else if (type == T_I32) {
    r.i = op == RED_ADD ? (int32_t)(x.u + y.u) : op == RED_MUL ? (int32_t)(x.u * y.u) : op == RED_MIN ? (x.i < y.i ? x.i : y.i) : (x.i > y.i ? x.i : y.i);
  } else {
    r.u = op == RED_ADD ? x.u + y.u : op == RED_MUL ? x.u * y.u : op == RED_MIN ? (x.u < y.u ? x.u : y.u) : (x.u > y.u ? x.u : y.u);
  }
  return r;
}

static void fold_lanes(int op, int type, Lane *restrict acc, const Lane *restrict v, int n) {
  if (op == RED_ADD && type == T_F32) LOOP(acc[j].f += v[j].f)
  else if (op == RED_MAX && type == T_F32) LOOP(acc[j].f = max_f(acc[j].f, v[j].f))
  else LOOP(acc[j] = fold(op, type, acc[j], v[j]))
}

// One output's run of lanes folded into it: float sums and maxima in vector-wide partials (a
// different order of additions than one by one, as wasm's SIMD reductions also use).
static Lane fold_run(int op, int type, Lane acc, const Lane *restrict v, int n) {
  int j = 0;
  if (type == T_F32 && (op == RED_ADD || op == RED_MAX) && n >= VL) {
    vf part;
    memcpy(&part, v, sizeof part);
    for (j = VL; j + VL <= n; j += VL) {
      vf x;
      memcpy(&x, v + j, sizeof x);
      if (op == RED_ADD) part += x;
      else part = vselect((x > part) | (x != x), x, part); // NaN wins, as in wasm
    }
    for (int k = 0; k < VL; k++) acc = fold(op, type, acc, (Lane){.f = part[k]});
  }
  for (; j < n; j++) acc = fold(op, type, acc, v[j]);
  return acc;
}

// Reductions over at least this many outputs take outputs as lanes.
#define OUTPUT_LANES_FROM 64

// Outputs [g_begin, g_end) of a program; regs: (nmain + nepi) × CH lanes, acc: CH lanes.
static void run_range(const Program *p, int64_t g_begin, int64_t g_end, Lane *regs, Lane *acc) {
  fill_consts(p->main, p->nmain + p->nepi, regs);
  const int64_t R = p->R;
  const int output_lanes = R > 1 && g_end - g_begin >= OUTPUT_LANES_FROM;
  const int64_t per = R == 1 || output_lanes ? CH : R >= CH ? 1 : CH / R; // outputs per chunk
  const Lane id = identity(p->red_op, p->red_type);
  const Lane *root = regs + (size_t)p->main_root * REG;
  for (int64_t g0 = g_begin; g0 < g_end; g0 += per) {
    const int gn = (int)(g_end - g0 < per ? g_end - g0 : per);
    const Lane *result;
    if (R == 1) {
      run_main(p, 0, regs, gn, g0, g0, -1);
      result = root;
    } else if (output_lanes) {
      run_main(p, 0, regs, gn, 0, g0, 0);
      for (int j = 0; j < gn; j++) acc[j] = id;
      for (int64_t r = 0; r < R; r++) {
        run_main(p, 1, regs, gn, 0, g0, r);
        fold_lanes(p->red_op, p->red_type, acc, root, gn);
      }
      result = acc;
    } else {
      for (int j = 0; j < gn; j++) acc[j] = id;
      const int64_t f_end = (g0 + gn) * R;
      for (int64_t f0 = g0 * R; f0 < f_end; f0 += CH) {
        const int n = (int)(f_end - f0 < CH ? f_end - f0 : CH);
        run_main(p, 0, regs, n, f0, g0, -1);
        run_main(p, 1, regs, n, f0, g0, -1);
        int64_t g = f0 / R - g0, q = f0 % R;
        for (int j = 0; j < n;) {
          const int run = (int)(R - q < n - j ? R - q : n - j);
          acc[g] = fold_run(p->red_op, p->red_type, acc[g], root + j, run);
          j += run;
          q += run;
          if (q == R) q = 0, g++;
        }
      }
      result = acc;
    }
    if (p->nepi > 0) {
      for (int k = p->nmain; k < p->nmain + p->nepi; k++) run_instr(p, k, 1, regs, gn, g0, g0, -1, result);
      result = regs + (size_t)p->epi_root * REG;
    }
    memcpy(p->out + (size_t)g0 * 4, result, (size_t)gn * sizeof(Lane));
  }
}

typedef struct {
  const Program *p;
  int64_t begin, end;
  int failed;
} Slice;

// Registers are kept between calls, by the calling (JavaScript) thread for itself and for each
// helper it starts: allocating them afresh each time made the allocator return and re-fault the
// pages (a tenth of a training step went to zeroing pages).
typedef struct {
  Lane *regs;
  size_t lanes;
} Kept;
static _Thread_local Kept kept[64];

typedef struct {
  Slice slice;
  Kept *registers;
} Work;

static void *run_work(void *arg) {
  Work *w = arg;
  Slice *s = &w->slice;
  size_t lanes = (size_t)s->p->nregs * REG + CH;
  if (w->registers->lanes < lanes) {
    free(w->registers->regs);
    w->registers->regs = aligned_alloc(64, lanes * sizeof(Lane));
    w->registers->lanes = w->registers->regs ? lanes : 0;
  }
  if (!w->registers->regs) {
    s->failed = 1;
    return NULL;
  }
  run_range(s->p, s->begin, s->end, w->registers->regs, w->registers->regs + lanes - CH);
  return NULL;
}

// ---- Node-API: kernel(memory: Uint8Array, desc: Float64Array) ----
static int read_instrs(const double *d, int count, int nviews, int nregs, Instr *out) {
  for (int k = 0; k < count; k++) {
    const double *x = d + (size_t)k * INSTR;
    Instr in = {(int)x[0], (int)x[1], (int)x[2], (int)x[3], (int)x[4], (int)x[5], x[6], x[7] != 0};
    if (in.op < 0 || in.op >= OP_COUNT || in.type < 0 || in.type > T_BOOL) return 0;
    // Every register named is one of the program's (a wrong one computes garbage, never reads elsewhere).
    if (in.dst < 0 || in.dst >= nregs || in.a >= nregs || in.b >= nregs || in.c >= nregs) return 0;
    int arity = in.op == OP_WHERE || in.op == OP_MULADD ? 3 : (in.op >= OP_ADD && in.op <= OP_CMPNE) ? 2 : (in.op >= OP_CAST) ? 1 : 0;
    if ((arity >= 1 && in.a < 0) || (arity >= 2 && in.b < 0) || (arity >= 3 && in.c < 0)) return 0;
    if (in.op == OP_LOAD && (in.imm < 0 || in.imm >= nviews)) return 0;
    out[k] = in;
  }
  return 1;
}

static napi_value js_kernel(napi_env env, napi_callback_info info) {
  uint8_t *mem;
  size_t length, dlen;
  const double *d;
  if (!starflow_call_args(env, info, "kernel", &mem, &length, &d, &dlen)) return NULL;
  if (dlen < HEADER || d[0] != MAGIC) return starflow_throw(env, "kernel: malformed descriptor");
  const int nmain = (int)d[1], nepi = (int)d[2], nviews = (int)d[8], nregs = (int)d[11];
  const double R = d[3], outputs = d[7], begin = d[9], end = d[10];
  if (nmain < 1 || nmain > 100000 || nepi < 0 || nepi > 100000 || nviews < 0 || nviews > 100000 ||
      dlen != HEADER + (size_t)(nmain + nepi) * INSTR + (size_t)nviews * VIEW_LEN || !(R >= 1) || R > 1e12 ||
      !(outputs >= 0) || !(begin >= 0) || begin > end || end > outputs || d[4] < RED_NONE || d[4] > RED_MAX ||
      (R > 1 && d[4] == RED_NONE) || d[5] < T_F32 || d[5] > T_BOOL || !(d[6] >= 0) || nregs < 1 || nregs > 100000 ||
      d[12] < 0 || d[12] >= nregs || d[13] < 0 || d[13] >= nregs)
    return starflow_throw(env, "kernel: malformed descriptor");
  if (d[6] + 4 * outputs > (double)length) return starflow_throw(env, "kernel: the output reaches outside the memory");
  Instr *instrs = malloc((size_t)(nmain + nepi) * sizeof(Instr));
  View *views = malloc((size_t)(nviews ? nviews : 1) * sizeof(View));
  if (!instrs || !views) {
    free(instrs);
    free(views);
    return starflow_throw(env, "kernel: out of memory");
  }
  const double *vd = d + HEADER + (size_t)(nmain + nepi) * INSTR;
  const char *error = NULL;
  if (!read_instrs(d + HEADER, nmain + nepi, nviews, nregs, instrs))
    error = "kernel: malformed descriptor";
  // Every element a view can read must lie inside the memory.
  for (int k = 0; k < nviews && !error; k++) {
    const double *x = vd + (size_t)k * VIEW_LEN;
    View *v = &views[k];
    v->ndim = (int)x[1];
    v->offset = (int64_t)x[2];
    v->masked = x[3] != 0;
    v->reduced = x[4] != 0;
    if (!(x[0] >= 0) || v->ndim < 1 || v->ndim > MAXDIM) {
      error = "kernel: malformed descriptor";
      break;
    }
    v->base = (const uint8_t *)mem + (size_t)x[0];
    double lowest = x[0] / 4 + v->offset, highest = lowest;
    for (int i = 0; i < v->ndim; i++) {
      v->shape[i] = (int64_t)x[5 + i];
      v->strides[i] = (int64_t)x[5 + MAXDIM + i];
      v->lo[i] = v->masked ? (int64_t)x[5 + 2 * MAXDIM + i] : 0;
      v->hi[i] = v->masked ? (int64_t)x[5 + 3 * MAXDIM + i] : v->shape[i];
      if (v->shape[i] < 1 || v->lo[i] < 0 || v->hi[i] > v->shape[i] || v->lo[i] >= v->hi[i]) {
        error = "kernel: malformed descriptor";
        break;
      }
      double s = (double)v->strides[i];
      lowest += s * (s > 0 ? v->lo[i] : v->hi[i] - 1);
      highest += s * (s > 0 ? v->hi[i] - 1 : v->lo[i]);
    }
    if (!error && (lowest < 0 || 4 * (highest + 1) > (double)length)) error = "kernel: a load reaches outside the memory";
  }
  if (!error) {
    Program p = {instrs, nmain, nepi, nregs, (int)d[12], (int)d[13], (int64_t)R, (int)d[4], (int)d[5], (uint8_t *)mem + (size_t)d[6], views};
    const int64_t b = (int64_t)begin, e = (int64_t)end;
    const double lane_ops = (end - begin) * R * (nmain + nepi);
    int threads = thread_count;
    // Below ~1M lane operations a thread costs more to start than it saves.
    if (lane_ops < 1e6) threads = 1;
    if (threads > 64) threads = 64;
    if (threads > e - b) threads = (int)(e - b > 0 ? e - b : 1);
    Work work[64];
    pthread_t tid[64];
    for (int t = 0; t < threads; t++) work[t] = (Work){{&p, b + (e - b) * t / threads, b + (e - b) * (t + 1) / threads, 0}, &kept[t]};
    int started[64] = {0};
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&tid[t], NULL, run_work, &work[t]) == 0;
    run_work(&work[0]);
    for (int t = 1; t < threads; t++) {
      if (started[t]) pthread_join(tid[t], NULL);
      else run_work(&work[t]); // no thread to be had: this one does it
    }
    for (int t = 0; t < threads; t++)
      if (work[t].slice.failed) error = "kernel: out of memory";
  }
  free(instrs);
  free(views);
  return error ? starflow_throw(env, error) : NULL;
}

napi_value starflow_register_kernels(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "kernel", NAPI_AUTO_LENGTH, js_kernel, NULL, &fn);
  napi_set_named_property(env, exports, "kernel", fn);
  return exports;
}
