#include "bench/step_proxies.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "common/check.h"

namespace moe::bench {

ProxyCounts& ProxyCounts::operator+=(const ProxyCounts& o) {
  launches += o.launches;
  host_syncs += o.host_syncs;
  elementwise_bytes += o.elementwise_bytes;
  allocated_bytes += o.allocated_bytes;
  return *this;
}

namespace {

// What the operator's schema and tags say about one operator (looked up once per overload).
struct OpTraits {
  bool launches = true;     // does work (not a view, an allocation or metadata)
  bool device_kernel = false;  // has its own kernel for the device (not a composite of others)
  bool elementwise = false;  // pointwise, a copy or a fill
  bool data_dependent = false;  // output size or value read back: a host synchronisation
  bool multi_tensor = false;    // _foreach_ / _fused_: one multi-tensor kernel on a GPU (elementwise)
  bool one_kernel = false;      // counted once whatever it calls on the CPU: multi-tensor ones, _grouped_mm
  std::vector<size_t> written_args;  // arguments the call writes (in-place and out= forms)
  bool returns_nothing = false;
  int dtype_arg = -1;  // index of the argument named dtype, if any
};

// Calls without a kernel: allocations, reshapes of metadata.
const std::set<std::string> kNoWork = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
                                       "aten::new_empty_strided", "aten::resize_", "aten::resize_as_",
                                       "aten::set_", "aten::_unsafe_view", "aten::lift_fresh", "aten::lift"};
// Calls that read a device value back on the host (beyond those tagged data-dependent).
const std::set<std::string> kReadsBack = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
                                          "aten::equal", "aten::bincount", "aten::repeat_interleave"};
const std::set<std::string> kElementwiseExtra = {"aten::copy_", "aten::fill_", "aten::zero_"};

// One kernel on a GPU, a loop of other operators (scalar reads included) in the CPU's fallback.
const std::set<std::string> kOneKernelOnGpus = {"aten::_grouped_mm"};

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

OpTraits traits_of(const at::RecordFunction& fn, const std::string& name, c10::DispatchKey device_key) {
  OpTraits t;
  t.multi_tensor = starts_with(name, "aten::_foreach_") || starts_with(name, "aten::_fused_");
  t.one_kernel = t.multi_tensor || kOneKernelOnGpus.count(name) > 0;
  // Our fused kernels (moe::) are memory-bound passes like the operators they replace: their
  // writes count, the norm's (a reduction, not tagged pointwise) as ATen's _fused_rms_norm's do.
  t.elementwise = kElementwiseExtra.count(name) > 0 || starts_with(name, "moe::");
  t.data_dependent = kReadsBack.count(name) > 0;
  if (kNoWork.count(name)) t.launches = false;
  const auto op_name = fn.operator_name();
  // Not an operator (an autograd annotation such as "detach"): what it does runs through operators.
  if (!op_name) return {false};
  const auto handle = c10::Dispatcher::singleton().findOp(*op_name);
  if (!handle) return t;
  const auto& schema = handle->schema();
  t.device_kernel = handle->hasKernelForDispatchKey(device_key);
  t.elementwise = t.elementwise || handle->hasTag(at::Tag::pointwise);
  t.data_dependent = t.data_dependent || handle->hasTag(at::Tag::data_dependent_output) ||
                     handle->hasTag(at::Tag::dynamic_output_shape);
  if (handle->hasTag(at::Tag::inplace_view)) t.launches = false;
  bool returns_tensor = false, returns_view = false;
  for (const auto& r : schema.returns()) {
    const auto kind = r.type()->kind();
    const bool tensor = kind == c10::TypeKind::TensorType || kind == c10::TypeKind::ListType;
    returns_tensor = returns_tensor || tensor;
    if (tensor && r.alias_info() != nullptr && !r.alias_info()->isWrite()) returns_view = true;
  }
  t.returns_nothing = schema.returns().empty();
  for (size_t i = 0; i < schema.arguments().size(); ++i) {
    if (schema.arguments()[i].name() == "dtype") t.dtype_arg = static_cast<int>(i);
    const auto* alias = schema.arguments()[i].alias_info();
    if (alias != nullptr && alias->isWrite()) t.written_args.push_back(i);
  }
  // A view, or a call with no tensor result and nothing written, does no device work (a scalar
  // read still synchronises: counted there).
  if (returns_view || (!returns_tensor && t.written_args.empty())) t.launches = false;
  return t;
}

int64_t tensor_bytes(const c10::IValue& v) {
  if (v.isTensor()) {
    const auto& t = v.toTensor();
    return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  }
  int64_t sum = 0;
  if (v.isTensorList()) {
    for (const auto& t : v.toTensorVector()) sum += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  } else if (v.isList()) {
    for (const auto& item : v.toListRef()) sum += tensor_bytes(item);
  } else if (v.isTuple()) {
    for (const auto& item : v.toTupleRef().elements()) sum += tensor_bytes(item);
  }
  return sum;
}

// Bytes the written arguments of a call hold (read on entry: ATen keeps the inputs only then). For
// the calls that return nothing (the multi-tensor ones); the others return what they wrote.
int64_t written_argument_bytes(const at::RecordFunction& fn, const OpTraits& t) {
  int64_t sum = 0;
  const auto inputs = fn.inputs();
  for (const auto i : t.written_args) {
    if (i < inputs.size()) sum += tensor_bytes(inputs[i]);
  }
  return sum;
}

int64_t output_bytes(const at::RecordFunction& fn) {
  int64_t sum = 0;
  for (const auto& out : fn.outputs()) sum += tensor_bytes(out);
  return sum;
}

// Indexing synchronises only with a boolean mask (a nonzero inside); with integer indices it does not.
bool indexes_by_mask(const at::RecordFunction& fn) {
  for (const auto& v : fn.inputs()) {
    if (!v.isList()) continue;
    for (const auto& item : v.toListRef()) {
      if (item.isTensor() && item.toTensor().defined() &&
          (item.toTensor().scalar_type() == at::kBool || item.toTensor().scalar_type() == at::kByte)) {
        return true;
      }
    }
  }
  return false;
}

// A move to the host: an aten::to whose target device is the CPU, taken from a device tensor, or
// a copy_ from a device tensor into a host one. On a CPU run, an aten::to that names the CPU and no
// dtype (`.to(kCPU)`, `.cpu()`: it would cross on a GPU; a cast to another tensor's options, as
// autograd's do, names both and stays on its device).
bool moves_to_host(const at::RecordFunction& fn, const std::string& name, const OpTraits& t, bool cpu_run) {
  const auto inputs = fn.inputs();
  if (inputs.empty() || !inputs[0].isTensor()) return false;
  if (name == "aten::copy_") {
    return inputs.size() > 1 && inputs[1].isTensor() && inputs[0].toTensor().is_cpu() &&
           !inputs[1].toTensor().is_cpu();
  }
  if (name != "aten::to") return false;
  if (!cpu_run && inputs[0].toTensor().is_cpu()) return false;
  if (cpu_run && t.dtype_arg >= 0 && t.dtype_arg < static_cast<int>(inputs.size()) && !inputs[t.dtype_arg].isNone()) {
    return false;
  }
  return std::any_of(inputs.begin(), inputs.end(),
                     [](const c10::IValue& v) { return v.isDevice() && v.toDevice().is_cpu(); });
}

// One open operator call on this thread.
struct Frame {
  bool has_child = false;
  bool counted = false;  // counted as a launch on entry: a kernel of the device, or a multi-tensor call
  bool absorbs = false;  // counted, or inside a counted call: what it calls is part of that launch
  bool syncs = false;    // a host synchronisation, or inside one: counted once, at the outermost
  int64_t written_on_entry = -1;  // bytes of the written arguments of a call that returns nothing
};
thread_local std::vector<Frame> t_frames;
// The autograd nodes this thread is running (the backward's operators are called inside them).
thread_local std::vector<std::string> t_nodes;

}  // namespace

struct ProxyRecorder::State {
  torch::Device device;
  std::mutex mutex;
  StepProxies counts;
  std::vector<std::string> regions;  // open regions, innermost last
  std::unordered_map<std::string, OpTraits> traits;
  int64_t live = 0;  // bytes allocated minus freed since the start
  at::CallbackHandle handle = 0;
  std::optional<c10::DebugInfoGuard> memory_guard;

  explicit State(torch::Device d) : device(d) {}

  ProxyCounts& region_counts() { return counts.by_region[regions.empty() ? std::string() : regions.back()]; }
  // The innermost region for the "region: operator" keys; "step" outside every region.
  std::string region_label() const { return regions.empty() ? std::string("step") : regions.back(); }

  template <typename Add>
  void add(Add&& f) {
    std::lock_guard<std::mutex> lock(mutex);
    ProxyCounts delta;
    f(delta);
    counts.total += delta;
    region_counts() += delta;
  }

  OpTraits traits_for(const at::RecordFunction& fn, const std::string& name) {
    const auto op = fn.operator_name();
    const std::string key = op ? op->name + "." + op->overload_name : name;
    std::lock_guard<std::mutex> lock(mutex);
    auto it = traits.find(key);
    if (it == traits.end()) {
      const auto device_key = device.is_cuda() ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU;
      it = traits.emplace(key, traits_of(fn, name, device_key)).first;
    }
    return it->second;
  }
};

namespace {

std::atomic<ProxyRecorder::State*> g_state{nullptr};

// "autograd::engine::evaluate_function: MulBackward0" and "MulBackward0" alike: the node's name;
// a custom function's "torch::autograd::CppNode<ns::Name>": Name.
std::string node_name(const std::string& record) {
  const auto colon = record.rfind(": ");
  auto name = colon == std::string::npos ? record : record.substr(colon + 2);
  if (name.rfind("torch::autograd::CppNode<", 0) == 0 && name.back() == '>') {
    name.pop_back();
    name = name.substr(name.rfind("::") + 2);
  }
  return name;
}

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
  auto* state = g_state.load();
  if (state == nullptr) return nullptr;
  const std::string name = fn.name();
  if (fn.scope() == at::RecordScope::BACKWARD_FUNCTION) {  // a context, not an operator
    t_nodes.push_back(node_name(name));
    return nullptr;
  }
  const Frame parent = t_frames.empty() ? Frame{} : t_frames.back();
  if (!t_frames.empty()) t_frames.back().has_child = true;
  const OpTraits t = state->traits_for(fn, name);
  // Counted on entry and once: the operators it calls (item's _local_scalar_dense, aten::to's
  // copy_) are part of the same synchronisation.
  const bool to_host = moves_to_host(fn, name, t, state->device.is_cpu());
  const bool data_dependent = t.data_dependent && (!starts_with(name, "aten::index") || indexes_by_mask(fn));
  const bool syncs = !parent.absorbs && !parent.syncs && (data_dependent || to_host);
  // The outermost call with a kernel of its own is the launch: what it calls (a scalar's
  // conversion, the CPU's loop over a _foreach_ list) happens inside that kernel on a GPU.
  const bool counted = !parent.absorbs && (t.one_kernel || (t.device_kernel && t.launches));
  t_frames.push_back({false, counted, parent.absorbs || counted, parent.syncs || syncs,
                      t.returns_nothing ? written_argument_bytes(fn, t) : -1});
  if (syncs) {
    state->add([](ProxyCounts& c) { c.host_syncs += 1; });
    std::lock_guard<std::mutex> lock(state->mutex);
    state->counts.syncs_by_op[state->region_label() + ": " + (to_host ? name + " (to host)" : name)] += 1;
  }
  return nullptr;
}

void on_exit(const at::RecordFunction& fn, at::ObserverContext*) {
  auto* state = g_state.load();
  if (state == nullptr) return;
  if (fn.scope() == at::RecordScope::BACKWARD_FUNCTION) {
    if (!t_nodes.empty()) t_nodes.pop_back();
    return;
  }
  if (t_frames.empty()) return;
  const Frame frame = t_frames.back();
  t_frames.pop_back();
  const std::string name = fn.name();
  const bool absorbed = !t_frames.empty() && t_frames.back().absorbs;
  const OpTraits t = state->traits_for(fn, name);
  const bool leaf = !frame.has_child;
  // A composite that calls nothing (copy_, say, whose kernel sits under a composite key) launches too.
  const bool counts_launch = frame.counted || (!absorbed && leaf && t.launches);
  int64_t bytes = 0;
  if (counts_launch && (t.elementwise || t.multi_tensor)) {
    bytes = frame.written_on_entry >= 0 ? frame.written_on_entry : output_bytes(fn);
  }
  if (!counts_launch && bytes == 0) return;
  state->add([&](ProxyCounts& c) {
    c.launches += counts_launch ? 1 : 0;
    c.elementwise_bytes += bytes;
  });
  std::lock_guard<std::mutex> lock(state->mutex);
  const std::string origin =
      state->region_label() + ": " + (t_nodes.empty() ? std::string() : t_nodes.back() + ": ") + name;
  if (counts_launch) {
    state->counts.launches_by_op[name] += 1;
    state->counts.launches_by_origin[origin] += 1;
  }
  if (bytes > 0) {
    state->counts.elementwise_bytes_by_op[name] += bytes;
    state->counts.elementwise_bytes_by_origin[origin] += bytes;
  }
}

// Receives every allocation and free of the threads that carry it (the autograd engine's included).
class AllocationReporter : public c10::MemoryReportingInfoBase {
 public:
  explicit AllocationReporter(ProxyRecorder::State* state) : state_(state) {}
  bool memoryProfilingEnabled() const override { return true; }
  void reportMemoryUsage(void*, int64_t bytes, size_t, size_t, c10::Device device) override {
    if (device.type() != state_->device.type()) return;
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->live += bytes;
    state_->counts.peak_bytes = std::max(state_->counts.peak_bytes, state_->live);
    if (bytes > 0) {
      state_->counts.total.allocated_bytes += bytes;
      state_->region_counts().allocated_bytes += bytes;
    }
  }

 private:
  ProxyRecorder::State* state_;
};

}  // namespace

void track_cpu_allocations() { FLAGS_caffe2_report_cpu_memory_usage = true; }

ProxyRecorder::ProxyRecorder(torch::Device device) : state_(std::make_unique<State>(device)) {
  State* expected = nullptr;
  MOE_CHECK(g_state.compare_exchange_strong(expected, state_.get()), "ProxyRecorder: another recorder is active");
  track_cpu_allocations();
  state_->memory_guard.emplace(c10::DebugInfoKind::PROFILER_STATE, std::make_shared<AllocationReporter>(state_.get()));
  state_->handle = at::addGlobalCallback(at::RecordFunctionCallback(on_enter, on_exit)
                                             .needsInputs(true)
                                             .needsOutputs(true)
                                             .scopes({at::RecordScope::FUNCTION,
                                                      at::RecordScope::BACKWARD_FUNCTION}));
}

ProxyRecorder::~ProxyRecorder() {
  at::removeCallback(state_->handle);
  state_->memory_guard.reset();
  g_state.store(nullptr);
  t_frames.clear();
  t_nodes.clear();
}

void ProxyRecorder::begin(const char* name) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->regions.emplace_back(name);
}

void ProxyRecorder::end(const char* name) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto& open = state_->regions;
  const auto it = std::find(open.rbegin(), open.rend(), std::string(name));
  if (it != open.rend()) open.erase(std::next(it).base());
}

StepProxies ProxyRecorder::result() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->counts;
}

namespace {

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / (1 << 20));
  return buf;
}

std::map<std::string, int64_t> in_mib(const std::map<std::string, int64_t>& bytes_by_key) {
  std::map<std::string, int64_t> mib;
  for (const auto& [key, bytes] : bytes_by_key) mib[key] = bytes >> 20;
  return mib;
}

std::string top(const std::map<std::string, int64_t>& by_op, int n) {
  std::vector<std::pair<int64_t, std::string>> sorted;
  for (const auto& [op, count] : by_op) sorted.emplace_back(-count, op);
  std::sort(sorted.begin(), sorted.end());
  std::ostringstream out;
  for (int i = 0; i < n && i < static_cast<int>(sorted.size()); ++i) {
    out << (i ? ", " : "") << sorted[i].second << " " << -sorted[i].first;
  }
  return out.str();
}

}  // namespace

std::string format_proxies(const StepProxies& p, int top_ops) {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "  %-20s %9s %7s %14s %14s\n", "region", "launches", "syncs", "elementwise",
                "allocated");
  out << line;
  auto row = [&](const std::string& name, const ProxyCounts& c) {
    std::snprintf(line, sizeof line, "  %-20s %9ld %7ld %14s %14s\n", name.c_str(), long(c.launches),
                  long(c.host_syncs), mib(c.elementwise_bytes).c_str(), mib(c.allocated_bytes).c_str());
    out << line;
  };
  for (const auto& [name, c] : p.by_region) row(name.empty() ? "(outside regions)" : name, c);
  row("step", p.total);
  out << "  peak above the start: " << mib(p.peak_bytes) << "\n";
  out << "  most launched: " << top(p.launches_by_op, top_ops) << "\n";
  out << "  most elementwise MiB: " << top(in_mib(p.elementwise_bytes_by_op), top_ops) << "\n";
  out << "  most launched, by origin: " << top(p.launches_by_origin, top_ops) << "\n";
  out << "  most elementwise MiB, by origin: " << top(in_mib(p.elementwise_bytes_by_origin), top_ops) << "\n";
  if (!p.syncs_by_op.empty()) out << "  host syncs: " << top(p.syncs_by_op, top_ops) << "\n";
  return out.str();
}

std::string proxies_json_fields(const StepProxies& p) {
  std::ostringstream out;
  out << "\"launches\":" << p.total.launches << ",\"host_syncs\":" << p.total.host_syncs
      << ",\"elementwise_bytes\":" << p.total.elementwise_bytes << ",\"allocated_bytes\":" << p.total.allocated_bytes
      << ",\"peak_bytes\":" << p.peak_bytes << ",\"by_region\":{";
  bool first = true;
  for (const auto& [name, c] : p.by_region) {
    out << (first ? "" : ",") << "\"" << (name.empty() ? "outside" : name) << "\":{\"launches\":" << c.launches
        << ",\"host_syncs\":" << c.host_syncs << ",\"elementwise_bytes\":" << c.elementwise_bytes
        << ",\"allocated_bytes\":" << c.allocated_bytes << "}";
    first = false;
  }
  out << "}";
  return out.str();
}

}  // namespace moe::bench
