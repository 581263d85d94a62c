// The resident memory of this process on the host, from /proc/self/status.
#pragma once
#include <cstdint>

namespace moe {

/// Returns freed heap memory to the system (malloc_trim) and resets the peak (VmHWM) to the current
/// resident set (5 into /proc/self/clear_refs): freed memory that new allocations would reuse
/// without raising the resident set would otherwise hide them from the peak.
void reset_peak_resident();

/// The peak resident set (VmHWM) since the start or the last reset, in bytes; 0 where unknown.
uint64_t peak_resident_bytes();

}  // namespace moe
