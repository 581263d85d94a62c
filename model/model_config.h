// MiniMind's model configuration (the seeds' PretrainedConfig fields) and its validation.
#pragma once
#include <cstdint>
#include <string>

namespace moe::model {

/// Every field of MiniMind2's MiniMindConfig, under the same names and defaults.
struct ModelConfig {
  // Dense part.
  double dropout = 0.0;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string hidden_act = "silu";  // silu | gelu | relu
  int64_t hidden_size = 512;
  int64_t intermediate_size = 0;  // 0 = MiniMind's rule, see resolved_intermediate_size()
  int64_t max_position_embeddings = 32768;
  int64_t num_attention_heads = 8;
  int64_t num_hidden_layers = 8;
  int64_t num_key_value_heads = 2;
  int64_t vocab_size = 6400;
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  bool flash_attn = true;  // fused scaled-dot-product kernel; false = explicit softmax(QK^T)V

  // Mixture of experts.
  bool use_moe = false;
  int64_t num_experts_per_tok = 2;
  int64_t n_routed_experts = 4;
  int64_t n_shared_experts = 1;
  std::string scoring_func = "softmax";  // softmax (MiniMind) | sigmoid (DeepSeek-V3)
  double aux_loss_alpha = 0.01;
  bool seq_aux = true;  // sequence-level aux loss; false = batch-level
  bool norm_topk_prob = true;

  // Routing beyond MiniMind (DeepSeek-V3's names).
  double routed_scaling_factor = 1.0;  // multiplies the chosen experts' weights
  double bias_update_rate = 0.0;  // > 0: auxiliary-loss-free balancing; the gates hold an fp32
                                  // e_score_correction_bias, added to the scores to choose experts
  double router_z_loss_coef = 0.0;  // > 0: + coef * mean(logsumexp(router logits)^2) per MoE layer
  int64_t n_group = 1;     // experts form n_group equal groups of consecutive ids; each token
  int64_t topk_group = 1;  // chooses among the experts of its best topk_group groups

  // Beyond MiniMind.
  double capacity_factor = 0.0;  // > 0: in training, each expert takes at most ceil(cf * tokens * k / E)
                                 // copies of the local batch, the rest are dropped; 0 = dropless
  std::string expert_compute = "auto";  // how local experts run: loop (one expert at a time), grouped
                                        // (one grouped matrix product for all), auto (grouped for
                                        // bfloat16 on CUDA, else loop)

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  /// The gates hold e_score_correction_bias (auxiliary-loss-free balancing is on).
  bool has_score_bias() const { return use_moe && bias_update_rate > 0; }
  /// Tokens choose experts within their best topk_group of n_group groups.
  bool limits_groups() const { return use_moe && topk_group < n_group; }
  /// intermediate_size, or when unset MiniMind's 64 * ceil(int(8 * hidden / 3) / 64).
  int64_t resolved_intermediate_size() const;
  /// Throws moe::InvalidArgument naming the first inconsistent field and its value.
  void validate() const;
  /// "key = value" lines, one per field, in declaration order.
  std::string to_string() const;
};

}  // namespace moe::model
