#include "trainer/mfu.h"

#include <string>

#ifdef MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace moe::trainer {

namespace {

int64_t expert_parameters(const model::ModelConfig& c) {
  return 3 * c.hidden_size * c.resolved_intermediate_size();  // gate, up, down
}

}  // namespace

int64_t total_parameters(const model::ModelConfig& c) {
  const int64_t h = c.hidden_size, d = c.head_dim();
  const int64_t attention = h * d * (2 * c.num_attention_heads + 2 * c.num_key_value_heads);  // q, o; k, v
  const int64_t ffn = c.use_moe ? (c.n_routed_experts + c.n_shared_experts) * expert_parameters(c) +
                                      c.n_routed_experts * h  // gate
                                : expert_parameters(c);
  const int64_t per_layer = attention + ffn + 2 * h;  // two norms
  return c.vocab_size * h + c.num_hidden_layers * per_layer + h;  // + final norm
}

int64_t active_parameters(const model::ModelConfig& c) {
  const int64_t idle = c.use_moe ? (c.n_routed_experts - c.num_experts_per_tok) * expert_parameters(c) : 0;
  return total_parameters(c) - c.num_hidden_layers * idle;
}

double training_flops_per_token(const model::ModelConfig& c, int64_t seq_len) {
  return 6.0 * double(active_parameters(c)) + 12.0 * double(c.num_hidden_layers * c.hidden_size * seq_len);
}

double known_peak_flops(const torch::Device& device) {
#ifdef MOE_WITH_CUDA
  if (!device.is_cuda()) return 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device.index()) != cudaSuccess) return 0;
  const std::string name = prop.name;
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 790e12;
  if (name.find("A100") != std::string::npos) return 312e12;
#endif
  (void)device;
  return 0;
}

}  // namespace moe::trainer
