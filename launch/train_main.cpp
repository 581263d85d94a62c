// moe-train: pretrains a MiniMind MoE with expert parallelism.
//   mpirun -np N build/bin/moe-train --config configs/tiny.ini [--group.key value ...]
// Every rank parses the same command line; a bad option makes every rank exit with status 2 and
// rank 0 print one message. A failure during training aborts every rank (no hang).
#include <mpi.h>
#include <torch/torch.h>

#include <iostream>

#include "common/check.h"
#include "common/log.h"
#include "parallel/collective_text.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"
#include "trainer/config_cli.h"
#include "trainer/stop_signal.h"
#include "trainer/trainer.h"

using namespace moe;

namespace {

int world_rank_for_logging() {
  parallel::ensure_mpi_initialized();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  set_log_rank(rank, size);
  return rank;
}

int train(const trainer::TrainConfig& config) {
  trainer::StopSignals stop_signals;  // a stop during set-up (a scheduler's signal) is kept for the loop
  auto world = parallel::make_communicator(config.parallel.backend, config.parallel.comm_timeout);
  try {
    const int ep = config.parallel.ep_size > 0 ? int(config.parallel.ep_size) : world->size();
    const auto experts = config.model.use_moe ? config.model.n_routed_experts : int64_t(ep);
    trainer::Trainer trainer(config, parallel::make_groups(world, ep, experts));
    const auto s = trainer.run();
    if (s.steps == 0) return 0;  // already complete: run() said so
    std::ostringstream os;
    os << (s.stopped_by_signal ? "stopped: " : "done: ") << s.steps << " steps";
    if (s.first_step > 0) os << " (" << s.first_step << " -> " << s.first_step + s.steps << ")";
    os << " in " << s.seconds << " s; train ce " << s.first_loss << " -> " << s.last_loss;
    if (s.last_val_ce >= 0) os << "; val ce " << s.first_val_ce << " -> " << s.last_val_ce;
    if (s.skipped_steps > 0) os << "; " << s.skipped_steps << " steps skipped";
    if (!s.checkpoint.empty()) os << "; checkpoint " << s.checkpoint;
    log_rank0("train", os.str());
    return 0;
  } catch (const parallel::CollectiveError& e) {
    log("error", e.what());  // every rank has it: all exit together
    return 1;
  } catch (const std::exception& e) {
    log("error", e.what());
    world->abort(e.what());  // the other ranks may be inside a collective: stop them all
    return 1;                // not reached: abort ends the process
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rank = world_rank_for_logging();
  trainer::TrainCommandLine cli;
  try {
    cli = trainer::parse_train_command_line(argc, argv);
  } catch (const std::exception& e) {
    if (rank == 0) std::cerr << "error: " << e.what() << "\n(see moe-train --help)\n";
    parallel::finalize_mpi();
    return 2;
  }
  if (cli.help || cli.dump_config) {
    if (rank == 0) std::cout << (cli.help ? trainer::usage() : trainer::dump_config(cli.config));
    parallel::finalize_mpi();
    return 0;
  }
  const int status = train(cli.config);
  parallel::finalize_mpi();
  return status;
}
