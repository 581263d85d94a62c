// Stop signals: the first asks for a graceful stop, a repeat within the window is the same stop
// (Slurm and the launcher both deliver it), a later one exits at once; nested guards keep what the
// outer one caught; the previous handlers come back after.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "trainer/stop_signal.h"

using moe::trainer::StopSignals;

namespace {

bool handler_is_default(int sig) {
  struct sigaction current {};
  sigaction(sig, nullptr, &current);
  return current.sa_handler == SIG_DFL;
}

}  // namespace

TEST(StopSignals, FirstSignalAsksForAStopAndRepeatsWithinTheWindowAreTheSameStop) {
  StopSignals guard;
  EXPECT_FALSE(StopSignals::requested());
  raise(SIGTERM);
  EXPECT_TRUE(StopSignals::requested());
  raise(SIGUSR1);  // the launcher's copy of the same stop: the process must live on
  raise(SIGTERM);
  EXPECT_TRUE(StopSignals::requested());
}

TEST(StopSignals, ASecondStopAfterTheWindowExitsAtOnceWithTheSignalsStatus) {
  EXPECT_EXIT(
      {
        StopSignals guard;
        raise(SIGINT);
        std::this_thread::sleep_for(std::chrono::milliseconds(StopSignals::kRepeatWindowSeconds * 1000 + 300));
        raise(SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(1));
        _exit(0);  // not reached when the second signal stops the process
      },
      testing::ExitedWithCode(128 + SIGTERM), "signal received: finishing this step");
}

TEST(StopSignals, NestedGuardsKeepASignalCaughtDuringSetUp) {
  ASSERT_TRUE(handler_is_default(SIGTERM));
  {
    StopSignals outer;  // moe-train's, around building the run
    raise(SIGTERM);
    {
      StopSignals inner;  // the training loop's
      EXPECT_TRUE(StopSignals::requested()) << "the inner guard must not forget the stop";
    }
    EXPECT_FALSE(handler_is_default(SIGTERM)) << "the outer guard still holds the handlers";
  }
  EXPECT_TRUE(handler_is_default(SIGTERM)) << "the previous handler must come back";
  StopSignals fresh;
  EXPECT_FALSE(StopSignals::requested()) << "a new outermost guard starts without a stop";
}
