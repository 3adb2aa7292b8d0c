// What the addon's two files share (native/gemm.c defines these; native/kernels.c uses them).
#ifndef STARFLOW_ADDON_H
#define STARFLOW_ADDON_H
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

// Per JavaScript thread: the trainer's data-parallel workers each run on their own budget.
extern _Thread_local int thread_count;

// Throws `msg` as a JavaScript Error; returns NULL for the caller to return.
napi_value starflow_throw(napi_env env, const char *msg);

// Reads (memory: Uint8Array over the wasm memory, descriptor: Float64Array), the arguments of every
// addon call; on anything else throws "NAME: ..." and returns 0.
int starflow_call_args(napi_env env, napi_callback_info info, const char *name, uint8_t **memory, size_t *length,
                       const double **desc, size_t *desc_length);

napi_value starflow_register_kernels(napi_env env, napi_value exports); // native/kernels.c
#endif
