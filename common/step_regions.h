// Named regions of a training step (attention, gate, dispatch, experts, combine, ...) for time
// breakdowns. The model marks them with ScopedRegion; a benchmark installs a RegionRecorder (e.g.
// one that records CUDA events) to time them. With no recorder a region costs one pointer test.
#pragma once

namespace moe {

class RegionRecorder {
 public:
  virtual ~RegionRecorder() = default;
  virtual void begin(const char* name) = 0;
  virtual void end(const char* name) = 0;
};

/// Installs the recorder that every later region reports to (nullptr: none). Not owned.
void set_region_recorder(RegionRecorder* recorder);
RegionRecorder* region_recorder();

/// Marks one region for the recorder installed at construction. Regions do not nest.
class ScopedRegion {
 public:
  explicit ScopedRegion(const char* name) : name_(name), recorder_(region_recorder()) {
    if (recorder_) recorder_->begin(name_);
  }
  ~ScopedRegion() { close(); }
  /// Ends the region before the scope does.
  void close() {
    if (recorder_) recorder_->end(name_);
    recorder_ = nullptr;
  }
  ScopedRegion(const ScopedRegion&) = delete;
  ScopedRegion& operator=(const ScopedRegion&) = delete;

 private:
  const char* name_;
  RegionRecorder* recorder_;
};

}  // namespace moe
