// The element types our CUDA kernels take, named without LibTorch (the kernels compile without it).
#pragma once

namespace moe::model::kernels {

enum class ElementType { kFloat32, kBFloat16, kFloat16 };

}  // namespace moe::model::kernels
