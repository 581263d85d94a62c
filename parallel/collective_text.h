// Small host-side agreements over a communicator: gathering a string from every rank, and turning
// one rank's failure into the same error on every rank (so that no rank goes on into a collective
// the failed rank will never join). Works over every backend (tensors go to the GPU for NCCL).
#pragma once
#include <string>
#include <vector>

#include "common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {

/// An error every rank of a group raised together (agree_or_throw): no rank waits in a collective
/// for another, so a program may exit normally instead of aborting the job.
class CollectiveError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

/// Every rank's `text`, in rank order, on every rank. Collective.
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& text);

/// Collective. If any rank passes a non-empty `error`, every rank throws CollectiveError with
/// the first failing rank's message ("<context>: rank R of N: <error>"); else returns.
void agree_or_throw(Communicator& comm, const std::string& error, const std::string& context);

}  // namespace moe::parallel
