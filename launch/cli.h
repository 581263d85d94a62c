// Command-line parsing shared by the launch/ programs (Boost.Program_options).
#pragma once
#include <boost/program_options.hpp>
#include <cstdlib>
#include <iostream>

namespace moe::launch {

/// Parses argv against desc. --help prints the options and exits 0; a bad option or value prints
/// "error: ..." and the options, and exits 2.
inline boost::program_options::variables_map parse_or_exit(int argc, char** argv,
                                                           const boost::program_options::options_description& desc) {
  namespace po = boost::program_options;
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      std::exit(0);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "error: " << e.what() << "\n\n" << desc << "\n";
    std::exit(2);
  }
  return vm;
}

}  // namespace moe::launch
