// starflow-ts native matmul: float32 GEMM on jax-js's own wasm memory, no copies.
//
// The engine routes jax-js kernels that are plain (batched) matrix products here (see
// src/engine/matmul-route.ts). Operands and result live in the wasm memory; JavaScript passes a
// view of that memory and a descriptor of byte offsets, sizes and strides. The product runs on
// the system's OpenBLAS when it can be loaded (dlopen, so nothing links against it), otherwise on
// the packed, register-blocked kernel below, compiled for this machine's vector width.
#include <node_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"
#include "vector.h"

typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                               float, float *, int);
static cblas_sgemm_fn blas_sgemm = NULL;
static char blas_name[256] = "builtin";
_Thread_local int thread_count = 1;

// ---- the builtin kernel: C[M,N] = A[M,K] · B[K,N], row-major, either operand transposed ----
#define MR 6
#define NR (2 * VL)
#define KC 256

// Element (r, k) of A and (k, c) of B under their storage order.
#define A_AT(r, k) (transA ? A[(size_t)(k) * lda + (r)] : A[(size_t)(r) * lda + (k)])
#define B_AT(k, c) (transB ? B[(size_t)(c) * ldb + (k)] : B[(size_t)(k) * ldb + (c)])

static void pack_a(int transA, const float *A, int lda, int r0, int mr, int k0, int kc, float *out) {
  for (int k = 0; k < kc; k++)
    for (int r = 0; r < MR; r++) out[k * MR + r] = r < mr ? A_AT(r0 + r, k0 + k) : 0.0f;
}

static void pack_b(int transB, const float *B, int ldb, int c0, int nr, int k0, int kc, float *out) {
  for (int k = 0; k < kc; k++)
    for (int c = 0; c < NR; c++) out[k * NR + c] = c < nr ? B_AT(k0 + k, c0 + c) : 0.0f;
}

// One MR × NR tile over kc: acc = Ap · Bp, then C (+)= acc on the mr × nr part that exists.
static void micro_kernel(int kc, const float *Ap, const float *Bp, float *C, int ldc, int mr, int nr, int add) {
  vf acc[MR][2];
  memset(acc, 0, sizeof acc);
  for (int k = 0; k < kc; k++) {
    vf b0, b1;
    memcpy(&b0, Bp + k * NR, sizeof b0);
    memcpy(&b1, Bp + k * NR + VL, sizeof b1);
    for (int r = 0; r < MR; r++) {
      vf a = {0};
      a += Ap[k * MR + r];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  float tile[MR][NR];
  memcpy(tile, acc, sizeof tile);
  for (int r = 0; r < mr; r++) {
    float *row = C + (size_t)r * ldc;
    if (add)
      for (int c = 0; c < nr; c++) row[c] += tile[r][c];
    else
      for (int c = 0; c < nr; c++) row[c] = tile[r][c];
  }
}

// Small products (attention over a KV cache: thousands of 1 × 16 × 64) cost more to pack than to
// compute: rows of B are added straight into C.
#define SMALL_MACS 16384

static void gemm_small(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B,
                       int ldb, float *C, int ldc) {
  for (int r = 0; r < M; r++) {
    float *row = C + (size_t)r * ldc;
    for (int c = 0; c < N; c++) row[c] = 0.0f;
    for (int k = 0; k < K; k++) {
      float a = A_AT(r, k);
      if (transB)
        for (int c = 0; c < N; c++) row[c] += a * B[(size_t)c * ldb + k];
      else
        for (int c = 0; c < N; c++) row[c] += a * B[(size_t)k * ldb + c];
    }
  }
}

static void gemm_builtin(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B,
                         int ldb, float *C, int ldc) {
  if ((long)M * N * K <= SMALL_MACS) {
    gemm_small(transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
    return;
  }
  if (K == 0) {
    for (int r = 0; r < M; r++) memset(C + (size_t)r * ldc, 0, (size_t)N * 4);
    return;
  }
  int npanels = (N + NR - 1) / NR;
  float *Bp = aligned_alloc(64, (size_t)npanels * KC * NR * 4);
  float *Ap = aligned_alloc(64, (size_t)KC * MR * 4);
  if (!Bp || !Ap) {  // no memory for the packed panels: the unpacked loop needs none
    free(Ap);
    free(Bp);
    gemm_small(transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
    return;
  }
  for (int k0 = 0; k0 < K; k0 += KC) {
    int kc = K - k0 < KC ? K - k0 : KC;
    for (int p = 0; p < npanels; p++) {
      int c0 = p * NR;
      pack_b(transB, B, ldb, c0, N - c0 < NR ? N - c0 : NR, k0, kc, Bp + (size_t)p * KC * NR);
    }
    for (int r0 = 0; r0 < M; r0 += MR) {
      int mr = M - r0 < MR ? M - r0 : MR;
      pack_a(transA, A, lda, r0, mr, k0, kc, Ap);
      for (int p = 0; p < npanels; p++) {
        int c0 = p * NR;
        micro_kernel(kc, Ap, Bp + (size_t)p * KC * NR, C + (size_t)r0 * ldc + c0, ldc, mr, N - c0 < NR ? N - c0 : NR,
                     k0 > 0);
      }
    }
  }
  free(Ap);
  free(Bp);
}

static void gemm_one(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc) {
  if (blas_sgemm)
    blas_sgemm(101 /* row-major */, transA ? 112 : 111, transB ? 112 : 111, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C,
               ldc);
  else
    gemm_builtin(transA, transB, M, N, K, A, lda, B, ldb, C, ldc);
}

// ---- one routed product: batch axes around a 2-D GEMM, rows split over threads when large ----
#define MAX_BATCH 4
typedef struct {
  uint8_t *base;
  double a, b, c;  // byte offsets in the memory
  int M, N, K, transA, lda, transB, ldb, ldc, nbatch;
  int bsize[MAX_BATCH];
  double bsa[MAX_BATCH], bsb[MAX_BATCH], bsc[MAX_BATCH];  // batch strides in elements
} Product;

typedef struct {
  const Product *p;
  long first, last;  // work items: (batch index, row block)
  int rows_per_item;
} Slice;

static void run_items(const Product *p, long first, long last, int rows_per_item) {
  long blocks = (p->M + rows_per_item - 1) / rows_per_item;
  for (long item = first; item < last; item++) {
    long bi = item / blocks, r0 = (item % blocks) * rows_per_item;
    int rows = p->M - r0 < rows_per_item ? (int)(p->M - r0) : rows_per_item;
    double oa = p->a / 4, ob = p->b / 4, oc = p->c / 4;
    long rest = bi;
    for (int d = p->nbatch - 1; d >= 0; d--) {
      long i = rest % p->bsize[d];
      rest /= p->bsize[d];
      oa += i * p->bsa[d];
      ob += i * p->bsb[d];
      oc += i * p->bsc[d];
    }
    const float *A = (const float *)p->base + (size_t)oa + (size_t)(p->transA ? r0 : r0 * (long)p->lda);
    const float *B = (const float *)p->base + (size_t)ob;
    float *C = (float *)p->base + (size_t)oc + r0 * (size_t)p->ldc;
    gemm_one(p->transA, p->transB, rows, p->N, p->K, A, p->lda, B, p->ldb, C, p->ldc);
  }
}

static void *run_slice(void *arg) {
  Slice *s = arg;
  run_items(s->p, s->first, s->last, s->rows_per_item);
  return NULL;
}

static void run_product(const Product *p) {
  long batches = 1;
  for (int d = 0; d < p->nbatch; d++) batches *= p->bsize[d];
  double flops = 2.0 * batches * p->M * p->N * p->K;
  int threads = thread_count;
  // Below ~4 MFLOP a thread costs more to start than it saves.
  if (threads > 1 && flops < 4e6) threads = 1;
  int rows_per_item = p->M;
  if (threads > 1 && batches < threads) rows_per_item = (p->M + threads - 1) / threads;
  long blocks = (p->M + rows_per_item - 1) / rows_per_item;
  long items = batches * blocks;
  if (threads > items) threads = (int)items;
  if (threads <= 1) {
    run_items(p, 0, items, rows_per_item);
    return;
  }
  pthread_t tid[64];
  Slice slices[64];
  if (threads > 64) threads = 64;
  for (int t = 0; t < threads; t++) {
    slices[t] = (Slice){p, items * t / threads, items * (t + 1) / threads, rows_per_item};
    if (t > 0 && pthread_create(&tid[t], NULL, run_slice, &slices[t]) != 0) {
      run_slice(&slices[t]);
      tid[t] = 0;
    }
  }
  run_slice(&slices[0]);
  for (int t = 1; t < threads; t++)
    if (tid[t]) pthread_join(tid[t], NULL);
}

// ---- Node-API ----
napi_value starflow_throw(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

int starflow_call_args(napi_env env, napi_callback_info info, const char *name, uint8_t **memory, size_t *length,
                       const double **desc, size_t *desc_length) {
  size_t argc = 2;
  napi_value argv[2];
  char msg[128];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_typedarray_type type;
  void *mem, *dptr;
  napi_value ab;
  size_t offset;
  const char *wrong = argc < 2 ? "takes (memory, descriptor)"
                      : napi_get_typedarray_info(env, argv[0], &type, length, &mem, &ab, &offset) != napi_ok || type != napi_uint8_array
                          ? "memory must be a Uint8Array"
                      : napi_get_typedarray_info(env, argv[1], &type, desc_length, &dptr, &ab, &offset) != napi_ok || type != napi_float64_array
                          ? "descriptor must be a Float64Array"
                          : NULL;
  if (wrong) {
    snprintf(msg, sizeof msg, "%s: %s", name, wrong);
    starflow_throw(env, msg);
    return 0;
  }
  *memory = mem;
  *desc = dptr;
  return 1;
}

// gemm(memory: TypedArray over the wasm memory, desc: Float64Array)
// desc = [a, b, c, M, N, K, transA, lda, transB, ldb, ldc, nbatch, (size, strideA, strideB, strideC) × nbatch]
static napi_value js_gemm(napi_env env, napi_callback_info info) {
  uint8_t *mem;
  size_t length, dlen;
  const double *d;
  if (!starflow_call_args(env, info, "gemm", &mem, &length, &d, &dlen)) return NULL;
  if (dlen < 12 || d[11] < 0 || d[11] > MAX_BATCH || dlen < 12 + 4 * (size_t)d[11])
    return starflow_throw(env, "gemm: malformed descriptor");
  Product p = {.base = (uint8_t *)mem, .a = d[0], .b = d[1], .c = d[2], .M = (int)d[3], .N = (int)d[4], .K = (int)d[5], .transA = (int)d[6], .lda = (int)d[7], .transB = (int)d[8], .ldb = (int)d[9], .ldc = (int)d[10], .nbatch = (int)d[11]};
  for (int i = 0; i < p.nbatch; i++) {
    p.bsize[i] = (int)d[12 + 4 * i];
    p.bsa[i] = d[13 + 4 * i];
    p.bsb[i] = d[14 + 4 * i];
    p.bsc[i] = d[15 + 4 * i];
  }
  // Every element the product touches must lie inside the memory: a wrong descriptor is an error,
  // never a write elsewhere.
  if (p.M < 1 || p.N < 1 || p.K < 0 || p.lda < 1 || p.ldb < 1 || p.ldc < p.N) return starflow_throw(env, "gemm: malformed descriptor");
  double lastA = p.transA ? (double)(p.K - 1) * p.lda + (p.M - 1) : (double)(p.M - 1) * p.lda + (p.K - 1);
  double lastB = p.transB ? (double)(p.N - 1) * p.ldb + (p.K - 1) : (double)(p.K - 1) * p.ldb + (p.N - 1);
  double lastC = (double)(p.M - 1) * p.ldc + (p.N - 1);
  for (int i = 0; i < p.nbatch; i++) {
    if (p.bsize[i] < 1 || p.bsa[i] < 0 || p.bsb[i] < 0 || p.bsc[i] < 0) return starflow_throw(env, "gemm: malformed descriptor");
    lastA += (p.bsize[i] - 1) * p.bsa[i];
    lastB += (p.bsize[i] - 1) * p.bsb[i];
    lastC += (p.bsize[i] - 1) * p.bsc[i];
  }
  if (p.a < 0 || p.b < 0 || p.c < 0 || (p.K > 0 && (p.a + 4 * (lastA + 1) > length || p.b + 4 * (lastB + 1) > length)) ||
      p.c + 4 * (lastC + 1) > length)
    return starflow_throw(env, "gemm: the product reaches outside the memory");
  run_product(&p);
  return NULL;
}

// configure(threads: number, blas: string) → name of the GEMM in use.
// blas: "auto" (OpenBLAS if it loads), "builtin", or a shared library path exporting cblas_sgemm.
static napi_value js_configure(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t threads = 1;
  if (argc > 0) napi_get_value_int32(env, argv[0], &threads);
  thread_count = threads < 1 ? 1 : threads;
  char want[512] = "auto";
  size_t n;
  if (argc > 1) napi_get_value_string_utf8(env, argv[1], want, sizeof want, &n);
  // The GEMM is one for the process: asked again for the same one (each worker thread asks), it
  // stays as it is, so no thread ever sees it change under a running product.
  static char loaded_for[512] = "";
  if (strcmp(want, loaded_for) != 0) {
    snprintf(loaded_for, sizeof loaded_for, "%s", want);
    blas_sgemm = NULL;
    strcpy(blas_name, "builtin");
  }
  if (strcmp(want, "builtin") != 0 && !blas_sgemm) {
    const char *candidates[] = {"libopenblas.so.0", "libopenblas.so", NULL};
    const char *single[] = {want, NULL};
    const char **list = strcmp(want, "auto") == 0 ? candidates : single;
    for (int i = 0; list[i] && !blas_sgemm; i++) {
      void *h = dlopen(list[i], RTLD_NOW | RTLD_LOCAL);
      if (!h) continue;
      blas_sgemm = (cblas_sgemm_fn)dlsym(h, "cblas_sgemm");
      // Parallelism is ours (rows or batches over threads); OpenBLAS runs each part on one thread.
      void (*set_threads)(int) = (void (*)(int))dlsym(h, "openblas_set_num_threads");
      if (set_threads) set_threads(1);
      if (blas_sgemm) snprintf(blas_name, sizeof blas_name, "%s", list[i]);
    }
  }
  napi_value result;
  napi_create_string_utf8(env, blas_name, NAPI_AUTO_LENGTH, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "gemm", NAPI_AUTO_LENGTH, js_gemm, NULL, &fn);
  napi_set_named_property(env, exports, "gemm", fn);
  napi_create_function(env, "configure", NAPI_AUTO_LENGTH, js_configure, NULL, &fn);
  napi_set_named_property(env, exports, "configure", fn);
  return starflow_register_kernels(env, exports);
}
