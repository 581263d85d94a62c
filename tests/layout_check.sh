#!/usr/bin/env bash
# The direction of dependencies between the folders, checked on the #include lines: each folder may
# include only the folders listed for it (the CMake libraries enforce the same at link time).
#   common <- model <- parallel <- trainer's configuration <- trainer/data, trainer/optim
#   <- trainer/checkpoint <- trainer (the loop) <- interop <- launch, bench
# model/kernels (CUDA kernels, compiled without LibTorch) include only each other.
# Usage: layout_check.sh SOURCE_DIR
set -euo pipefail
src="$1"
# folder (its own files, not its subfolders) -> extended regex of the includes it may have
declare -A allowed=(
  [common]='^common/'
  [model]='^(common|model)/'
  [model/kernels]='^model/kernels/'
  [parallel]='^(common|model|parallel)/'
  [trainer/data]='^(common|trainer/data)/'
  [trainer/optim]='^(common|model|parallel|trainer/optim)/|^trainer/train_config\.h$'
  [trainer/checkpoint]='^(common|model|parallel|trainer/checkpoint|trainer/optim)/|^trainer/(train_config|config_cli|training_state)\.h$|^trainer/data/loader_position\.h$'
  [trainer]='^(common|model|parallel|trainer)/'
  [interop]='^(common|model|parallel|interop|trainer/checkpoint|trainer/data)/|^trainer/(train_config|config_cli)\.h$'
  [launch]='^(common|model|parallel|trainer|interop|launch)/'
  [bench]='^(common|model|parallel|trainer|launch|bench)/'
)
bad=0
for folder in "${!allowed[@]}"; do
  for file in "$src/$folder"/*.h "$src/$folder"/*.cpp "$src/$folder"/*.cu "$src/$folder"/*.cuh; do
    [ -f "$file" ] || continue
    while IFS= read -r header; do
      if ! [[ "$header" =~ ${allowed[$folder]} ]]; then
        echo "layout: ${file#"$src"/} includes \"$header\", outside what $folder/ may include"
        bad=1
      fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
  done
done
[ "$bad" = 0 ] && echo "layout: every #include follows the direction of the stages"
exit "$bad"
