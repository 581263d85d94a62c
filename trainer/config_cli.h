// The training command line: Boost.Program_options groups (model, parallel, data, optim, train,
// checkpoint) over TrainConfig, INI files in configs/, with the precedence
// defaults < --config file < command line, and --dump-config to print the result as an INI file.
#pragma once
#include <map>
#include <string>

#include "trainer/train_config.h"

namespace moe::trainer {

struct TrainCommandLine {
  TrainConfig config;
  std::string config_file;  // --config, empty if none
  bool help = false;        // --help: print usage() and exit
  bool dump_config = false;  // --dump-config: print dump_config(config) and exit
};

/// Parses argv. Throws moe::InvalidArgument with one message naming the bad key and value (an
/// unknown option, a bad value, a missing or malformed config file, a failed validation).
TrainCommandLine parse_train_command_line(int argc, const char* const* argv);

/// The options, by group, with their defaults.
std::string usage();

/// The configuration as an INI file that --config reads back to the same values.
std::string dump_config(const TrainConfig& config);

/// The configuration as "group.key" -> value text, as dump_config writes it.
std::map<std::string, std::string> config_values(const TrainConfig& config);

/// The inverse of config_values (keys missing from `values` keep their defaults); refuses an
/// unknown key or a bad value, naming `what`.
TrainConfig config_from_values(const std::map<std::string, std::string>& values, const std::string& what);

/// Reads an INI file written by dump_config (or by hand) over the defaults.
TrainConfig load_config_file(const std::string& path);

}  // namespace moe::trainer
