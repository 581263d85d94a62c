#include "common/step_regions.h"

namespace moe {

namespace {
RegionRecorder* g_recorder = nullptr;  // instrumentation, like a profiler's: one per process
}

void set_region_recorder(RegionRecorder* recorder) { g_recorder = recorder; }
RegionRecorder* region_recorder() { return g_recorder; }

}  // namespace moe
