#!/usr/bin/env python3
"""Inspects a moe-train checkpoint with Python's standard library alone.

    python3 tools/inspect_checkpoint.py runs/tiny                  # the step `latest` names
    python3 tools/inspect_checkpoint.py runs/tiny/checkpoints/step_00000400 --verify
    python3 tools/inspect_checkpoint.py runs/tiny --tensors experts.3

Prints the manifest's summary (step, tokens, layout, data position, files), lists tensors whose
name contains a filter, and with --verify checks every file's size and CRC-32 and every tensor's
CRC-32 against the manifest (exit 1 on a mismatch). The tensor files are safetensors: load them
with `safetensors.torch.load_file(path)` (or safetensors.numpy) to get name -> tensor.
"""
import argparse
import json
import os
import struct
import sys
import zlib


def step_dir(path):
    if os.path.exists(os.path.join(path, "manifest.json")):
        return path
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    with open(os.path.join(path, "latest")) as f:
        return os.path.join(path, f.read().strip())


def crc32_of_file(path, start=0, length=None, chunk=1 << 24):
    crc = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = os.path.getsize(path) - start if length is None else length
        while left > 0:
            block = f.read(min(chunk, left))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def verify(directory, manifest):
    problems = []
    for name, info in manifest["files"].items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            problems.append(f"{name}: missing")
            continue
        if os.path.getsize(path) != info["size"]:
            problems.append(f"{name}: {os.path.getsize(path)} bytes, the manifest says {info['size']}")
        elif crc32_of_file(path) != info["crc32"]:
            problems.append(f"{name}: CRC-32 differs from the manifest's")
    for name, t in manifest["tensors"].items():
        path = os.path.join(directory, t["file"])
        if not os.path.exists(path):
            continue
        data_start, header = safetensors_header(path)
        begin, end = header[name]["data_offsets"]
        if crc32_of_file(path, data_start + begin, end - begin) != t["crc32"]:
            problems.append(f"{name}: CRC-32 differs from the manifest's")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="run directory, its checkpoints/ or a step directory")
    parser.add_argument("--verify", action="store_true", help="check every file and tensor against its CRC-32")
    parser.add_argument("--tensors", metavar="FILTER", help="list the tensors whose name contains FILTER")
    args = parser.parse_args()
    directory = step_dir(args.path)
    with open(os.path.join(directory, "manifest.json")) as f:
        m = json.load(f)
    s, topo = m["state"], m["topology"]
    model = [n for n in m["tensors"] if not n.startswith("optimizer.")]
    print(f"{directory}: format {m['format']} v{m['format_version']}, step {m['step']}, {m['tokens']} tokens")
    print(f"  saved by {topo['world']} ranks (ep {topo['ep']} x edp {topo['edp']}); data epoch {s['data_epoch']} "
          f"window {s['data_window']} (seq_len {s['seq_len']}); last lr {s['last_lr']:.3g}")
    print(f"  {len(model)} parameters ({sum(_numel(m['tensors'][n]['shape']) for n in model)} values), "
          f"{len(m['tensors']) - len(model)} optimizer tensors, {len(m['files'])} files:")
    for name, info in sorted(m["files"].items()):
        print(f"    {name:40s} {info['size']:>14,d} bytes  (written by rank {info['rank']})")
    if args.tensors is not None:
        for name, t in sorted(m["tensors"].items()):
            if args.tensors in name:
                print(f"  {name} {t['dtype']} {t['shape']} in {t['file']}")
    if args.verify:
        problems = verify(directory, m)
        for p in problems:
            print("  MISMATCH " + p)
        print(f"  verify: {'FAILED' if problems else 'every file and tensor matches its CRC-32'}")
        return 1 if problems else 0
    return 0


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    sys.exit(main())
