// Precompiled header shared by all targets (see CMakeLists.txt). Only heavy, stable headers.
#pragma once
#include <torch/torch.h>
