#include "common/python_tool.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

#include "common/check.h"

extern char** environ;

namespace moe {

namespace {

std::string source_dir() {
  if (const char* dir = std::getenv("MOE_SOURCE_DIR"); dir != nullptr && *dir != '\0') return dir;
  return MOE_SOURCE_DIR;
}

std::vector<std::string> command(const std::string& script, const std::vector<std::string>& args) {
  const auto root = std::filesystem::path(source_dir());
  const auto pytool = (root / "tools" / "pytool").string();
  const auto path = (root / "tools" / script).string();
  MOE_CHECK(std::filesystem::exists(pytool) && std::filesystem::exists(path), "the Python helper '", path,
            "' is missing: set MOE_SOURCE_DIR to the source tree these programs were built from");
  std::vector<std::string> argv{pytool, path};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Starts argv; the actions wire the child's stdin and stdout (or nothing when empty).
pid_t spawn(const std::vector<std::string>& argv, posix_spawn_file_actions_t* actions) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, cargv[0], actions, nullptr, cargv.data(), environ);
  MOE_CHECK(rc == 0, "cannot start '", joined(argv), "': ", std::strerror(rc));
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// A pipe's (read, write) ends, each closed when it goes out of scope.
std::pair<UniqueFd, UniqueFd> make_pipe() {
  int fds[2];
  MOE_CHECK(pipe2(fds, O_CLOEXEC) == 0, "pipe: ", std::strerror(errno));
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// The file actions of a spawn, destroyed with it.
struct SpawnActions {
  SpawnActions() { posix_spawn_file_actions_init(&actions); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&actions); }
  posix_spawn_file_actions_t actions;
};

}  // namespace

void run_python_tool(const std::string& script, const std::vector<std::string>& args) {
  const auto argv = command(script, args);
  const int status = wait_for(spawn(argv, nullptr));
  MOE_CHECK(status == 0, "'", joined(argv), "' failed with exit status ", status,
            status == 1 ? "" : " (are the Python tools installed? launch/setup.sh --python)");
}

PythonCoprocess::PythonCoprocess(const std::string& script, const std::vector<std::string>& args) {
  const auto argv = command(script, args);
  what_ = joined(argv);
  auto [child_in, to_child] = make_pipe();
  auto [from_child, child_out] = make_pipe();
  SpawnActions spawn_actions;
  posix_spawn_file_actions_adddup2(&spawn_actions.actions, child_in.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&spawn_actions.actions, child_out.get(), STDOUT_FILENO);
  pid_ = spawn(argv, &spawn_actions.actions);  // the child's ends close with this scope
  to_child_ = std::move(to_child);
  from_child_ = std::move(from_child);
  signal(SIGPIPE, SIG_IGN);  // a helper that died is reported by request(), not by a signal
}

PythonCoprocess::~PythonCoprocess() {
  to_child_ = UniqueFd();  // end of input: the helper exits
  from_child_ = UniqueFd();
  if (pid_ > 0) wait_for(pid_);
}

std::string PythonCoprocess::read_line() {
  for (;;) {
    const auto newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      auto line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    char chunk[65536];
    const ssize_t n = read(from_child_.get(), chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, "the Python helper '", what_, "' stopped answering (its error is above; are the Python "
              "tools installed? launch/setup.sh --python)");
    buffer_.append(chunk, size_t(n));
  }
}

void PythonCoprocess::write_all(const void* data, size_t bytes) {
  const auto* at = static_cast<const char*>(data);
  for (size_t done = 0; done < bytes;) {
    const ssize_t n = write(to_child_.get(), at + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, "the Python helper '", what_, "' stopped reading (its error is above)");
    done += size_t(n);
  }
}

void PythonCoprocess::read_exact(void* data, size_t bytes) {
  auto* at = static_cast<char*>(data);
  const size_t buffered = std::min(bytes, buffer_.size());
  std::memcpy(at, buffer_.data(), buffered);
  buffer_.erase(0, buffered);
  for (size_t done = buffered; done < bytes;) {
    const ssize_t n = read(from_child_.get(), at + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, "the Python helper '", what_, "' stopped answering (its error is above)");
    done += size_t(n);
  }
}

std::string PythonCoprocess::request(const std::string& line) {
  const std::string message = line + "\n";
  write_all(message.data(), message.size());
  return read_line();
}

}  // namespace moe
