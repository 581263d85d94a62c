#include "trainer/stop_signal.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace moe::trainer {

namespace {

std::atomic<int> g_signals{0};
constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
struct sigaction g_previous[3];

void on_signal(int sig) {
  if (g_signals.fetch_add(1) > 0) _exit(128 + sig);  // the second signal: stop now
  static const char message[] = "[stop] signal received: finishing this step, then saving a checkpoint "
                                "(send it again to exit at once)\n";
  const ssize_t ignored = write(STDERR_FILENO, message, sizeof(message) - 1);
  (void)ignored;
}

}  // namespace

StopSignals::StopSignals() {
  g_signals = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // MPI and file I/O in flight carry on
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &action, &g_previous[i]);
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
}

bool StopSignals::requested() { return g_signals.load() > 0; }

}  // namespace moe::trainer
