// The MiniMind language model: token embeddings -> blocks -> final norm -> tied output projection,
// with loss = cross entropy + the MoE layers' aux losses and router z-losses. Parameter names are
// MiniMind2's PyTorch state_dict keys (model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight,
// ...), plus DeepSeek-V3's model.layers.N.mlp.gate.e_score_correction_bias with balancing by bias.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/block.h"

namespace moe::model {

/// Cached keys/values of every layer plus, for batches of unequal prompts, the padding mask of all
/// cached positions ([B, T_past], 1 = real token), which the model extends on each call.
struct KVCache {
  std::vector<LayerKVCache> layers;
  torch::Tensor attention_mask;
  int64_t length() const { return layers.empty() ? 0 : layers.front().length(); }
};

class MiniMindModelImpl : public torch::nn::Module {
 public:
  explicit MiniMindModelImpl(const ModelConfig& config, ExpertRange local_experts = {});

  struct Output {
    torch::Tensor hidden;                          // [B, T, hidden], after the final norm, in the LM head's
                                                   // matmul dtype where the fused norm writes it (autocast)
    torch::Tensor aux_loss;                        // scalar, summed over layers
    torch::Tensor z_loss;                          // scalar, summed over layers
    std::vector<ExpertLoad> expert_load;           // per MoE layer
  };
  /// input_ids: [B, T] int64. attention_mask: optional [B, T_past + T], 1 = real token, 0 = padding
  /// (left padding); it sets the positions and hides padded keys. cache: optional, extended in place.
  Output forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                 KVCache* cache = nullptr);

  torch::nn::Embedding embed_tokens = nullptr;
  torch::nn::Dropout dropout = nullptr;
  torch::nn::ModuleList layers = nullptr;
  RMSNorm norm = nullptr;
  torch::Tensor freqs_cos, freqs_signed_sin;  // [max_position_embeddings, head_dim] buffers (not saved; RopeTables)

  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
};
TORCH_MODULE(MiniMindModel);

struct CausalLMOutput {
  torch::Tensor logits;    // [B, T, vocab]
  torch::Tensor loss;      // ce_loss + aux_loss + z_loss; undefined without targets
  torch::Tensor ce_loss;   // mean cross entropy over targets != ignore_index
  torch::Tensor aux_loss;  // sum of the MoE layers' aux losses (0 when none or in eval)
  torch::Tensor z_loss;    // sum of the MoE layers' router z-losses (0 when none or in eval)
  std::vector<ExpertLoad> expert_load;  // per MoE layer: routed and dropped copies per expert
};

class CausalLMImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kIgnoreIndex = -100;

  /// Validates the config, builds the model and initialises it with initialize_parameters() from a
  /// seed drawn from torch's default generator (so torch::manual_seed(s) fixes the model).
  /// local_experts: the routed experts this process holds (default all; see parallel/); each
  /// expert's values do not depend on which others are built.
  explicit CausalLMImpl(const ModelConfig& config, ExpertRange local_experts = {});

  /// targets: optional [B, T] int64, the token expected after each input position (already
  /// shifted); kIgnoreIndex entries do not count. See MiniMindModelImpl::forward for the rest.
  CausalLMOutput forward(const torch::Tensor& input_ids, const torch::Tensor& targets = {},
                         const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);

  /// The MoE feed-forward of every MoE layer, in layer order (empty for a dense model).
  std::vector<MoEFeedForward> moe_layers() const;

  /// MiniMind2's state_dict: named_parameters() plus "lm_head.weight", the tied embedding.
  std::vector<std::pair<std::string, torch::Tensor>> state_dict() const;

  const ModelConfig& config() const { return model->config(); }

  MiniMindModel model = nullptr;  // the output projection is model->embed_tokens->weight (tied)
};
TORCH_MODULE(CausalLM);

/// The notebook's initialisation: normal(0, 0.02) for linear and embedding weights,
/// 0.02/sqrt(2*layers) for up_proj and o_proj, Kaiming-uniform gates, unit norms. Dense parameters
/// draw from one generator seeded by `seed`, in name order; each routed expert from its own,
/// seeded by expert_seed(seed, layer, global id): a rank that builds some experts gets exactly the
/// values a single process gets for them.
void initialize_parameters(torch::nn::Module& lm, const ModelConfig& config, uint64_t seed);

/// (layer, global expert id) of a routed expert's parameter name
/// ("model.layers.3.mlp.experts.5.up_proj.weight" -> (3, 5)); nullopt for every other name.
std::optional<std::pair<int64_t, int64_t>> routed_expert_of(const std::string& name);

/// The initialisation seed of one routed expert.
uint64_t expert_seed(uint64_t seed, int64_t layer, int64_t expert);

}  // namespace moe::model
