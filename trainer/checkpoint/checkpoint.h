// Training checkpoints: the whole training state, sharded over the ranks that hold it, in a layout
// any other (world, ep) layout can resume from and Python can read.
//
//   <run>/checkpoints/step_00000100/manifest.json     what is where, with sizes and CRC-32s
//                                                     (trainer/checkpoint/checkpoint_manifest.h)
//                                   model-00000-of-00004.safetensors       parameters written by rank 0
//                                   optimizer-00000-of-00004.safetensors   their AdamW state
//                                   ... one pair per rank
//                                   config.ini, tokenizer.model            the run's, for tools
//                                   (or tokenizer.json [+ tokenizer_config.json])
//   <run>/checkpoints/latest                          the name of the newest complete step directory
//
// Tensor names are MiniMind2's parameter names with global expert ids, whatever the layout. Every
// parameter is written once: each expert by one of the ranks that hold it, the replicated dense
// parameters spread over all ranks (balanced by bytes), each with its optimiser state.
// A save writes step_N.tmp/ (every file fsync'ed), then the manifest, renames the directory and
// then replaces `latest` atomically: a crash at any moment leaves the previous checkpoint and
// `latest` valid. Readers validate every header against the file before using it and the CRC-32
// of every tensor they read.
//
// The parts: checkpoint_dirs.h (step directories, `latest`, pruning), checkpoint_write_plan.h (who
// writes what), checkpoint_writer.h (the collective save), checkpoint_reader.h (validated reads,
// restoring a model and its optimiser), checkpoint_manifest.h (manifest.json), resume.h (what a
// resumed run takes from a checkpoint).
#pragma once
#include "trainer/checkpoint/checkpoint_dirs.h"
#include "trainer/checkpoint/checkpoint_reader.h"
#include "trainer/checkpoint/checkpoint_writer.h"
