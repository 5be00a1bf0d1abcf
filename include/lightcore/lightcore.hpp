// The host-side essentials in one include: element types, views and tensors, errors, the CPU
// backend (and the CUDA backend when built with it), and the cache_tensor_manager.
#pragma once

#include "lightcore/backend/backend.hpp"
#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/tensor.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/backend/cuda.hpp"
#endif
