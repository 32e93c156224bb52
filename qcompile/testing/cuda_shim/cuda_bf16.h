/* CPU shim: half and bfloat16 live in cuda_shim.h. */
#pragma once
#include "cuda_shim.h"
