// The addon's vector type: as wide as the machine it is built on (-march=native), through GCC's
// vector extensions, for what plain loops would not vectorise (native/gemm.c, native/kernels.c).
#ifndef STARFLOW_VECTOR_H
#define STARFLOW_VECTOR_H
#include <stdint.h>

#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

#endif
