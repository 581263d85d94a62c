#include "model/causal_lm.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <regex>

#include "common/check.h"
#include "common/step_regions.h"
#include "model/cross_entropy.h"
#include "model/functional.h"

namespace moe::model {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Mask for T new tokens after `past` cached ones, [B or 1, 1, T, past + T], true = may attend.
// Undefined when plain causal attention is exact (no padding, nothing cached).
torch::Tensor attention_mask_for(const torch::Tensor& padding, int64_t past, int64_t t, const torch::Device& device) {
  if (!padding.defined() && past == 0) return {};
  const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  const auto query_pos = torch::arange(past, past + t, opts).unsqueeze(1);  // [T, 1]
  const auto key_pos = torch::arange(past + t, opts).unsqueeze(0);          // [1, past + T]
  auto allowed = (key_pos <= query_pos).unsqueeze(0);                        // [1, T, past + T]
  if (padding.defined()) {
    // A padded query may see itself, so that no softmax row is empty (its output is never used).
    allowed = allowed.logical_and(padding.to(torch::kBool).unsqueeze(1)).logical_or(key_pos == query_pos);
  }
  return allowed.unsqueeze(1);
}

}  // namespace

MiniMindModelImpl::MiniMindModelImpl(const ModelConfig& c, ExpertRange local_experts) : config_(c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.dropout));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(Block(c, i, local_experts));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  auto rope = rope_tables(c.head_dim(), c.max_position_embeddings, c.rope_theta, torch::get_default_dtype_as_scalartype());
  freqs_cos = register_buffer("freqs_cos", rope.cos);
  freqs_signed_sin = register_buffer("freqs_signed_sin", rope.signed_sin);
}

MiniMindModelImpl::Output MiniMindModelImpl::forward(const torch::Tensor& input_ids,
                                                     const torch::Tensor& attention_mask, KVCache* cache) {
  const auto b = input_ids.size(0), t = input_ids.size(1);
  const int64_t past = cache ? cache->length() : 0;
  MOE_CHECK(past + t <= config_.max_position_embeddings, "sequence of ", past + t,
            " positions exceeds max_position_embeddings ", config_.max_position_embeddings);
  torch::Tensor padding = attention_mask;
  if (cache && (cache->attention_mask.defined() || attention_mask.defined())) {
    // The cache remembers the padding of past positions; new tokens default to real.
    if (!padding.defined()) padding = torch::ones({b, t}, input_ids.options());
    if (padding.size(1) == t && past > 0) {
      const auto past_mask = cache->attention_mask.defined() ? cache->attention_mask
                                                             : torch::ones({b, past}, input_ids.options());
      padding = torch::cat({past_mask.to(padding.scalar_type()), padding}, 1);
    }
    cache->attention_mask = padding;
  }
  MOE_CHECK(!padding.defined() || (padding.size(0) == b && padding.size(1) == past + t), "attention_mask of shape ",
            padding.sizes(), " does not cover ", past, " cached + ", t, " new positions for batch ", b);

  torch::Tensor positions;  // [B, T]
  if (padding.defined()) {
    positions = (padding.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).slice(1, past, past + t);
  } else {
    positions = torch::arange(past, past + t, input_ids.options().dtype(torch::kInt64)).unsqueeze(0).expand({b, t});
  }
  const auto cos = freqs_cos.index({positions});  // [B, T, head_dim]
  const auto signed_sin = freqs_signed_sin.index({positions});
  const auto mask = attention_mask_for(padding, past, t, input_ids.device());

  if (cache && cache->layers.empty()) cache->layers.resize(layers->size());
  Residual h{dropout(embed_tokens(input_ids)), {}};
  // Only the losses the gates compute are summed (the others are zeros), from the first MoE layer's
  // on: per layer an add (and a zero-fill) fewer for each loss the config leaves off.
  const bool aux_on = is_training() && config_.aux_loss_alpha > 0.0;
  const bool z_on = is_training() && config_.router_z_loss_coef > 0.0;
  const auto loss_options = h.stream.options().dtype(compute_dtype(h.stream.scalar_type()));
  auto add = [&](const torch::Tensor& sum, const torch::Tensor& term) {
    return sum.defined() ? sum + term : term.to(loss_options.dtype());  // the zero's dtype, as zero + term
  };
  Output out;
  for (size_t i = 0; i < layers->size(); ++i) {
    auto block = layers[i]->as<Block>()->forward(h, cos, signed_sin, mask, cache ? &cache->layers[i] : nullptr);
    h = block.hidden;
    if (!block.load.routed.defined()) continue;  // a dense layer: no routing, no losses
    if (aux_on) out.aux_loss = add(out.aux_loss, block.aux_loss);
    if (z_on) out.z_loss = add(out.z_loss, block.z_loss);
    out.expert_load.push_back(block.load);
  }
  if (!out.aux_loss.defined() || !out.z_loss.defined()) {
    const auto zero = torch::zeros({}, loss_options);
    if (!out.aux_loss.defined()) out.aux_loss = zero;
    if (!out.z_loss.defined()) out.z_loss = zero;
  }
  // The last block's add and the final norm in one pass, written as the LM head's product reads it.
  out.hidden = norm->add_then_forward_for_products(h.stream, h.pending).normed;
  return out;
}

CausalLMImpl::CausalLMImpl(const ModelConfig& c, ExpertRange local_experts) {
  c.validate();
  // One draw from the default generator, before the submodules consume any: the same on every
  // rank whatever experts it builds.
  const auto seed = static_cast<uint64_t>(torch::randint(INT64_MAX, {1}, torch::kInt64).item<int64_t>());
  model = register_module("model", MiniMindModel(c, local_experts));
  initialize_parameters(*this, c, seed);
}

void initialize_parameters(torch::nn::Module& lm, const ModelConfig& c, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * c.num_hidden_layers);
  auto dense = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::map<std::pair<int64_t, int64_t>, at::Generator> expert_generators;
  for (auto& p : lm.named_parameters()) {
    const auto& name = p.key();
    if (ends_with(name, "norm.weight") || ends_with(name, "e_score_correction_bias")) continue;  // ones, zeros
    at::Generator* gen = &dense;
    if (const auto id = routed_expert_of(name)) {
      auto it = expert_generators.find(*id);
      if (it == expert_generators.end()) {
        it = expert_generators.emplace(*id, at::make_generator<at::CPUGeneratorImpl>(expert_seed(seed, id->first,
                                                                                                  id->second))).first;
      }
      gen = &it->second;
    }
    // Drawn on the CPU in float32 and copied, so that the values do not depend on the device or dtype.
    auto value = torch::empty(p.value().sizes(), torch::kFloat32);
    if (ends_with(name, ".gate.weight")) {
      const double bound = 1.0 / std::sqrt(double(p.value().size(1)));  // Kaiming-uniform, a = sqrt(5)
      value.uniform_(-bound, bound, *gen);
    } else {
      const bool residual = ends_with(name, "up_proj.weight") || ends_with(name, "o_proj.weight");
      value.normal_(0.0, residual ? residual_std : 0.02, *gen);
    }
    p.value().copy_(value);
  }
}

std::optional<std::pair<int64_t, int64_t>> routed_expert_of(const std::string& name) {
  static const std::regex pattern(R"(^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.)");
  std::smatch m;
  if (!std::regex_search(name, m, pattern)) return std::nullopt;
  return std::make_pair(std::stoll(m[1].str()), std::stoll(m[2].str()));
}

uint64_t expert_seed(uint64_t seed, int64_t layer, int64_t expert) {
  // splitmix64 finaliser over the three numbers: distinct, well-mixed seeds per expert.
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed + 0x9E3779B97F4A7C15ULL) + uint64_t(layer)) + uint64_t(expert) * 0x9E3779B97F4A7C15ULL);
}

CausalLMOutput CausalLMImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& targets,
                                     const torch::Tensor& attention_mask, KVCache* cache) {
  auto out = model(input_ids, attention_mask, cache);
  ScopedRegion head("lm_head_and_loss");
  CausalLMOutput result;
  result.logits = torch::linear(out.hidden, model->embed_tokens->weight);
  result.aux_loss = out.aux_loss;
  result.z_loss = out.z_loss;
  result.expert_load = std::move(out.expert_load);
  if (targets.defined()) {
    const auto v = result.logits.size(-1);
    result.ce_loss = blockwise_cross_entropy(result.logits.reshape({-1, v}), targets.reshape({-1}), kIgnoreIndex);
    result.loss = result.ce_loss + result.aux_loss + result.z_loss;
  }
  return result;
}

std::vector<MoEFeedForward> CausalLMImpl::moe_layers() const {
  std::vector<MoEFeedForward> moe;
  for (const auto& layer : *model->layers) {
    if (auto block = layer->as<Block>(); block->moe_mlp) moe.push_back(block->moe_mlp);
  }
  return moe;
}

std::vector<std::pair<std::string, torch::Tensor>> CausalLMImpl::state_dict() const {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (const auto& p : named_parameters()) entries.emplace_back(p.key(), p.value());
  entries.emplace_back("lm_head.weight", model->embed_tokens->weight);
  return entries;
}

}  // namespace moe::model
