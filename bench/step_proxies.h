// CPU-side proxies of what a training step costs on a GPU, counted on any machine from ATen's
// operator records (RecordFunction, what the profiler reads) and the allocator's reports:
//   launches      operator calls that do work: calls that call no other operator and are neither
//                 views, allocations nor metadata (a kernel launch each on a GPU); a `_foreach_`
//                 or `_fused_` call counts once, whatever it calls on the CPU (one multi-tensor
//                 kernel on a GPU)
//   host syncs    calls that make the host wait for a GPU: scalar reads (`item`), operators whose
//                 output size depends on the data (`nonzero`, `masked_select`, `unique`, ...),
//                 moves to the host (`.to(kCPU)`, `.cpu()`)
//   allocated     bytes the step allocated on its device; peak: the most it held above what was
//                 live when it began
//   elementwise   bytes written by pointwise operators, copies and fills (the memory traffic that
//                 fusion, torch.compile's or ours, removes)
// Each figure is split by the innermost step region open at the time (common/step_regions.h).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "common/step_regions.h"

namespace moe::bench {

struct ProxyCounts {
  int64_t launches = 0, host_syncs = 0, elementwise_bytes = 0, allocated_bytes = 0;
  ProxyCounts& operator+=(const ProxyCounts& other);
};

struct StepProxies {
  ProxyCounts total;
  int64_t peak_bytes = 0;                         // above the bytes live at the start
  std::map<std::string, ProxyCounts> by_region;   // innermost region; "" outside every region
  std::map<std::string, int64_t> launches_by_op;  // e.g. "aten::copy_" -> 1540
  std::map<std::string, int64_t> elementwise_bytes_by_op;
  std::map<std::string, int64_t> syncs_by_op;     // by region and operator, e.g. "experts: aten::item" -> 16
  // Launches and elementwise bytes by origin: the region, the autograd node that ran the operator
  // in the backward, and the operator, e.g. "backward: ToCopyBackward0: aten::copy_" -> 128.
  std::map<std::string, int64_t> launches_by_origin;
  std::map<std::string, int64_t> elementwise_bytes_by_origin;
};

/// Counts while alive, on every thread, for one device (its allocations; operators anywhere).
/// Also the RegionRecorder that attributes counts to regions: install it with
/// set_region_recorder for the breakdown. One recorder at a time per process.
class ProxyRecorder : public RegionRecorder {
 public:
  explicit ProxyRecorder(torch::Device device);
  ~ProxyRecorder() override;
  ProxyRecorder(const ProxyRecorder&) = delete;
  ProxyRecorder& operator=(const ProxyRecorder&) = delete;

  void begin(const char* name) override;
  void end(const char* name) override;
  /// What was counted so far.
  StepProxies result() const;

  struct State;  // shared with the operator callbacks (free functions, as ATen requires)

 private:
  std::unique_ptr<State> state_;
};

/// The CPU allocator reports a free only of a block whose size it recorded, and records sizes only
/// from this call on: call it before allocating what a recorded step may free (a model, its
/// gradients), or such frees go uncounted (and the allocator warns of them).
void track_cpu_allocations();

/// One line per figure and region, for humans; and the totals as JSON fields (no braces).
std::string format_proxies(const StepProxies& p, int top_ops = 8);
std::string proxies_json_fields(const StepProxies& p);

}  // namespace moe::bench
