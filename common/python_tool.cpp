#include "common/python_tool.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

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
  const auto pytool = (root / "launch" / "pytool").string();
  const auto path = (root / "launch" / script).string();
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
  int in[2], out[2];
  MOE_CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0, "pipe: ", std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  try {
    pid_ = spawn(argv, &actions);
  } catch (...) {
    posix_spawn_file_actions_destroy(&actions);
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    throw;
  }
  posix_spawn_file_actions_destroy(&actions);
  close(in[0]);
  close(out[1]);
  to_child_ = in[1];
  from_child_ = out[0];
  signal(SIGPIPE, SIG_IGN);  // a helper that died is reported by request(), not by a signal
}

PythonCoprocess::~PythonCoprocess() {
  if (to_child_ >= 0) close(to_child_);  // end of input: the helper exits
  if (from_child_ >= 0) close(from_child_);
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
    const ssize_t n = read(from_child_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, "the Python helper '", what_, "' stopped answering (its error is above; are the Python "
              "tools installed? launch/setup.sh --python)");
    buffer_.append(chunk, size_t(n));
  }
}

std::string PythonCoprocess::request(const std::string& line) {
  const std::string message = line + "\n";
  for (size_t done = 0; done < message.size();) {
    const ssize_t n = write(to_child_, message.data() + done, message.size() - done);
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, "the Python helper '", what_, "' stopped reading (its error is above)");
    done += size_t(n);
  }
  return read_line();
}

}  // namespace moe
