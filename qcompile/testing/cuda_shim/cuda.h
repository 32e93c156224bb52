/* CPU shim: TVM's CUDA source includes <cuda.h> (the driver API) but uses none of it. */
#ifndef QC_SHIM_CUDA_H
#define QC_SHIM_CUDA_H
#include "cuda_runtime_api.h"
#endif
