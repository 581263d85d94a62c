#include "model/recomputed_block.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "common/step_regions.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autocast state of one device type, set again for the recomputation (autocast is per thread,
// and the backward usually runs outside the forward's scope).
struct AutocastState {
  bool enabled;
  c10::ScalarType dtype;
};

class WithAutocast {
 public:
  WithAutocast(c10::DeviceType device, AutocastState state)
      : device_(device), before_{at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)} {
    at::autocast::set_autocast_dtype(device_, state.dtype);
    at::autocast::set_autocast_enabled(device_, state.enabled);
  }
  ~WithAutocast() {
    at::autocast::set_autocast_enabled(device_, before_.enabled);
    at::autocast::set_autocast_dtype(device_, before_.dtype);
    at::autocast::clear_cache();
  }

 private:
  c10::DeviceType device_;
  AutocastState before_;
};

class WithoutRegions {
 public:
  WithoutRegions() : saved_(region_recorder()) { set_region_recorder(nullptr); }
  ~WithoutRegions() { set_region_recorder(saved_); }

 private:
  RegionRecorder* saved_;
};

// What the block reads besides the residual: no gradient flows to them.
struct BlockContext {
  torch::Tensor cos, signed_sin, attn_mask;  // attn_mask may be undefined
};

// Outputs: the block's residual (sum, pending) and its two losses. Inputs: the residual (pending
// an empty sentinel where undefined) and the block's parameters, so that their gradients flow.
struct RecomputedBlock : torch::autograd::Function<RecomputedBlock> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& stream, const torch::Tensor& pending,
                               at::TensorList params, BlockImpl* block, const BlockContext* context, ExpertLoad* load) {
    const auto device = stream.device().type();
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);  // the module outlives the graph
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(device);
    ctx->saved_data["autocast_dtype"] = at::autocast::get_autocast_dtype(device);
    ctx->saved_data["cos"] = context->cos;
    ctx->saved_data["signed_sin"] = context->signed_sin;
    if (context->attn_mask.defined()) ctx->saved_data["attn_mask"] = context->attn_mask;
    ctx->save_for_backward({stream, pending});
    const auto out = block->run({stream, pending.numel() > 0 ? pending : torch::Tensor()}, context->cos,
                                context->signed_sin, context->attn_mask);
    *load = out.load;
    // The losses may be the gate's kept zero: outputs of their own (no copy), so that autograd marks
    // those and not the zero the gate keeps.
    return {out.hidden.stream, out.hidden.pending, out.aux_loss.detach(), out.z_loss.detach()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* block = reinterpret_cast<BlockImpl*>(ctx->saved_data["block"].toInt());
    const auto saved = ctx->get_saved_variables();
    const auto stream = saved[0].detach().requires_grad_(true);
    const bool has_pending = saved[1].numel() > 0;
    const auto pending = has_pending ? saved[1].detach().requires_grad_(true) : torch::Tensor();
    const auto mask = ctx->saved_data.count("attn_mask") ? ctx->saved_data["attn_mask"].toTensor() : torch::Tensor();
    BlockOutput again;
    {
      torch::AutoGradMode grad_mode(true);
      WithAutocast autocast(stream.device().type(),
                            {ctx->saved_data["autocast"].toBool(), ctx->saved_data["autocast_dtype"].toScalarType()});
      WithoutRegions regions;
      again = block->run({stream, pending}, ctx->saved_data["cos"].toTensor(), ctx->saved_data["signed_sin"].toTensor(),
                         mask);
    }
    // Differentiate the outputs that got a gradient and depend on the inputs (a dense block's
    // losses are constants).
    const variable_list outputs = {again.hidden.stream, again.hidden.pending, again.aux_loss, again.z_loss};
    variable_list used_outputs, used_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (grads[i].defined() && outputs[i].requires_grad()) {
        used_outputs.push_back(outputs[i]);
        used_grads.push_back(grads[i]);
      }
    }
    // Gradients for the residual and every trainable parameter (a frozen one gets none).
    const auto params = block->parameters();
    variable_list inputs = {stream};
    if (has_pending) inputs.push_back(pending);
    for (const auto& p : params) {
      if (p.requires_grad()) inputs.push_back(p);
    }
    const auto input_grads = torch::autograd::grad(used_outputs, inputs, used_grads, /*retain_graph=*/false,
                                                   /*create_graph=*/false, /*allow_unused=*/true);
    auto next = input_grads.begin();
    variable_list result = {*next++, has_pending ? *next++ : torch::Tensor()};
    for (const auto& p : params) result.push_back(p.requires_grad() ? *next++ : torch::Tensor());
    result.resize(result.size() + 3);  // block, context, load: no gradient
    return result;
  }
};

}  // namespace

BlockOutput run_recomputed(BlockImpl& block, const Residual& x, const torch::Tensor& cos,
                           const torch::Tensor& signed_sin, const torch::Tensor& attn_mask) {
  const auto params = block.parameters();
  const auto pending = x.pending.defined() ? x.pending : x.stream.new_empty({0});  // inputs must be defined
  const BlockContext context{cos, signed_sin, attn_mask};
  ExpertLoad load;
  const auto out = RecomputedBlock::apply(x.stream, pending, at::TensorList(params), &block, &context, &load);
  return {{out[0], out[1]}, out[2], out[3], load};
}

}  // namespace moe::model
