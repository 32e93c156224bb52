/* CPU shim: the runtime API (cuda_runtime_api.h); in C++, also the device-side language (cuda_shim.h). */
#ifndef QC_SHIM_CUDA_RUNTIME_H
#define QC_SHIM_CUDA_RUNTIME_H
#include "cuda_runtime_api.h"
#ifdef __cplusplus
#include "cuda_shim.h"
#endif
#endif
