#include "trainer/stop_signal.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

namespace moe::trainer {

namespace {

std::atomic<int> g_signals{0};
std::atomic<int64_t> g_first_signal_ns{0};  // CLOCK_MONOTONIC
int g_depth = 0;                              // nested guards
constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
struct sigaction g_previous[3];

int64_t monotonic_ns() {  // async-signal-safe
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

void say(const char* text, size_t length) {
  const ssize_t ignored = write(STDERR_FILENO, text, length);
  (void)ignored;
}

void on_signal(int sig) {
  const int64_t now = monotonic_ns();
  if (g_signals.fetch_add(1) > 0) {
    const int64_t first = g_first_signal_ns.load();  // 0 while the first handler runs
    if (first != 0 && now - first > int64_t(StopSignals::kRepeatWindowSeconds) * 1000000000) {
      _exit(128 + sig);  // a second stop: now
    }
    return;  // the same stop, delivered again by the launcher
  }
  g_first_signal_ns = now;
  static const char message[] = "[stop] signal received: finishing this step, then saving a checkpoint "
                                "(send it again, 5 s or more later, to exit at once)\n";
  say(message, sizeof(message) - 1);
}

}  // namespace

StopSignals::StopSignals() {
  if (g_depth++ > 0) return;  // an outer guard holds the handlers and what they caught
  g_signals = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // MPI and file I/O in flight carry on
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &action, &g_previous[i]);
}

StopSignals::~StopSignals() {
  if (--g_depth > 0) return;
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
}

bool StopSignals::requested() { return g_signals.load() > 0; }

}  // namespace moe::trainer
