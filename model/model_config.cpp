#include "model/model_config.h"

#include <cmath>

#include <sstream>

#include "common/check.h"
#include "model/expert_executor.h"

namespace moe::model {

int64_t ModelConfig::resolved_intermediate_size() const {
  if (intermediate_size > 0) return intermediate_size;
  const int64_t raw = hidden_size * 8 / 3;  // Python's int(h * 8 / 3) for positive h
  return 64 * ((raw + 63) / 64);
}

void ModelConfig::validate() const {
  MOE_CHECK(hidden_size > 0, "hidden_size must be positive, got ", hidden_size);
  MOE_CHECK(num_hidden_layers > 0, "num_hidden_layers must be positive, got ", num_hidden_layers);
  MOE_CHECK(num_attention_heads > 0, "num_attention_heads must be positive, got ", num_attention_heads);
  MOE_CHECK(hidden_size % num_attention_heads == 0, "hidden_size ", hidden_size,
            " is not divisible by num_attention_heads ", num_attention_heads);
  MOE_CHECK(head_dim() % 2 == 0, "head dimension hidden_size/num_attention_heads = ", head_dim(),
            " must be even for rotary embeddings");
  MOE_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
            "num_key_value_heads ", num_key_value_heads, " must be positive and divide num_attention_heads ",
            num_attention_heads);
  MOE_CHECK(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  MOE_CHECK(bos_token_id >= 0 && bos_token_id < vocab_size, "bos_token_id ", bos_token_id,
            " is outside the vocabulary [0, ", vocab_size, ")");
  MOE_CHECK(eos_token_id >= 0 && eos_token_id < vocab_size, "eos_token_id ", eos_token_id,
            " is outside the vocabulary [0, ", vocab_size, ")");
  MOE_CHECK(intermediate_size >= 0, "intermediate_size must be positive (or 0 for MiniMind's rule), got ",
            intermediate_size);
  MOE_CHECK(max_position_embeddings > 0, "max_position_embeddings must be positive, got ",
            max_position_embeddings);
  MOE_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, "rms_norm_eps must be a finite positive number, got ",
            rms_norm_eps);
  MOE_CHECK(std::isfinite(rope_theta) && rope_theta > 0, "rope_theta must be a finite positive number, got ",
            rope_theta);
  MOE_CHECK(dropout >= 0 && dropout < 1, "dropout must be in [0, 1), got ", dropout);
  MOE_CHECK(hidden_act == "silu" || hidden_act == "gelu" || hidden_act == "relu", "hidden_act '", hidden_act,
            "' is not one of silu, gelu, relu");
  MOE_CHECK(std::isfinite(aux_loss_alpha) && aux_loss_alpha >= 0, "aux_loss_alpha must be finite and >= 0, got ",
            aux_loss_alpha);
  MOE_CHECK(std::isfinite(bias_update_rate) && bias_update_rate >= 0,
            "bias_update_rate must be finite and >= 0 (0 = off), got ", bias_update_rate);
  MOE_CHECK(std::isfinite(router_z_loss_coef) && router_z_loss_coef >= 0,
            "router_z_loss_coef must be finite and >= 0 (0 = off), got ", router_z_loss_coef);
  MOE_CHECK(std::isfinite(capacity_factor) && capacity_factor >= 0,
            "capacity_factor must be finite and >= 0 (0 = dropless), got ", capacity_factor);
  if (!use_moe) return;
  MOE_CHECK(n_routed_experts > 0, "n_routed_experts must be positive, got ", n_routed_experts);
  MOE_CHECK(num_experts_per_tok > 0 && num_experts_per_tok <= n_routed_experts, "num_experts_per_tok ",
            num_experts_per_tok, " must be in [1, n_routed_experts = ", n_routed_experts, "]");
  MOE_CHECK(n_shared_experts >= 0, "n_shared_experts must be >= 0, got ", n_shared_experts);
  MOE_CHECK(scoring_func == "softmax" || scoring_func == "sigmoid", "scoring_func '", scoring_func,
            "' is not one of softmax, sigmoid");
  MOE_CHECK(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0,
            "routed_scaling_factor must be a finite positive number, got ", routed_scaling_factor);
  MOE_CHECK(n_group > 0 && n_routed_experts % n_group == 0, "n_group ", n_group,
            " must be positive and divide n_routed_experts = ", n_routed_experts);
  MOE_CHECK(topk_group > 0 && topk_group <= n_group, "topk_group ", topk_group, " must be in [1, n_group = ", n_group,
            "]");
  MOE_CHECK(topk_group * (n_routed_experts / n_group) >= num_experts_per_tok, "topk_group ", topk_group,
            " groups of ", n_routed_experts / n_group, " experts cannot hold num_experts_per_tok = ",
            num_experts_per_tok, " choices");
  parse_expert_compute(expert_compute);  // names a value other than auto, loop, grouped
}

std::string ModelConfig::to_string() const {
  std::ostringstream os;
  os << std::boolalpha << "dropout = " << dropout << "\nbos_token_id = " << bos_token_id
     << "\neos_token_id = " << eos_token_id << "\nhidden_act = " << hidden_act << "\nhidden_size = " << hidden_size
     << "\nintermediate_size = " << resolved_intermediate_size()
     << "\nmax_position_embeddings = " << max_position_embeddings
     << "\nnum_attention_heads = " << num_attention_heads << "\nnum_hidden_layers = " << num_hidden_layers
     << "\nnum_key_value_heads = " << num_key_value_heads << "\nvocab_size = " << vocab_size
     << "\nrms_norm_eps = " << rms_norm_eps << "\nrope_theta = " << rope_theta << "\nflash_attn = " << flash_attn
     << "\nuse_moe = " << use_moe << "\nnum_experts_per_tok = " << num_experts_per_tok
     << "\nn_routed_experts = " << n_routed_experts << "\nn_shared_experts = " << n_shared_experts
     << "\nscoring_func = " << scoring_func << "\naux_loss_alpha = " << aux_loss_alpha << "\nseq_aux = " << seq_aux
     << "\nnorm_topk_prob = " << norm_topk_prob << "\nrouted_scaling_factor = " << routed_scaling_factor
     << "\nbias_update_rate = " << bias_update_rate << "\nrouter_z_loss_coef = " << router_z_loss_coef
     << "\nn_group = " << n_group << "\ntopk_group = " << topk_group << "\ncapacity_factor = " << capacity_factor
     << "\nexpert_compute = " << expert_compute << "\n";
  return os.str();
}

}  // namespace moe::model
