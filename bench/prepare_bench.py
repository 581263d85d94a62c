#!/usr/bin/env python3
"""moe-prepare's throughput beside the libraries it drives, on one corpus and the same cores.

  tools/pytool bench/prepare_bench.py [--bin build/bin] [--mb 60] [--shape long|short] [--memory 60,250,1000]

Builds a corpus of mixed prose and code from text on this machine (the fortunes, the Python sources
of the installed tools): documents of about 6.3 KB (--shape long) or 313 B (short, the shape of
MiniMind's pretraining data). Trains on it a byte-level BPE tokenizer.json of 6400 pieces (as
MiniMind's) and a SentencePiece BPE of 4096 pieces (moe-prepare's own). Then measures, side by side:
  moe-prepare --tokenizer tokenizer.json | tokenizer.model  with 1 worker and with every core
  (the whole pipeline, reading to shards; a tokenizer.json both with the native encoder and, with
  MOE_HF_ENCODER=library, with the library's helpers), and the encoding alone: `tokenizers` encode_batch_fast on
  1 thread and every core, Python `sentencepiece` encode on 1 thread and every core.
It prints MB/s, MB/s per core and the scaling from 1 core to all. --memory also prepares corpora of
those sizes (MB) with the SentencePiece model and prints moe-prepare's peak resident memory.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_texts():
    """Prose (the fortunes) and code (Python sources of the installed tools), as paragraphs."""
    paragraphs = []
    fortunes = "/usr/share/games/fortunes"
    if os.path.isdir(fortunes):
        for name in sorted(os.listdir(fortunes)):
            path = os.path.join(fortunes, name)
            if not os.path.islink(path) and not name.endswith(".dat"):
                paragraphs += open(path, encoding="utf-8", errors="replace").read().split("\n%\n")
    code_root = os.path.join(ROOT, ".deps", "python")
    for base, _, names in sorted(os.walk(code_root)):
        for name in sorted(names):
            if name.endswith(".py") and len(paragraphs) < 400000:
                paragraphs += open(os.path.join(base, name), encoding="utf-8", errors="replace").read().split("\n\n")
    return [p for p in paragraphs if p.strip()]


def write_corpus(path, megabytes, doc_bytes, seed=1):
    rng = random.Random(seed)
    paragraphs = source_texts()
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            doc, size = [], 0
            target = rng.randint(doc_bytes // 2, doc_bytes * 3 // 2)
            while size < target:
                p = rng.choice(paragraphs)
                doc.append(p)
                size += len(p) + 2
            line = json.dumps({"text": "\n\n".join(doc)[: target * 2]}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
    return path


def texts_of(path):
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


def train_hf_tokenizer(corpus, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=6400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts_of(corpus)[:20000], trainer)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, f)
    return os.path.join(out_dir, "tokenizer.json")


def run_prepare(bin_dir, corpus, tokenizer, workers, out_dir, extra=(), env=None):
    cmd = [os.path.join(bin_dir, "moe-prepare"), "--input", corpus, "--out_dir", out_dir, "--quiet",
           "--val_fraction", "0", "--workers", str(workers), *extra]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
    wall = time.perf_counter() - start
    summary = json.load(open(os.path.join(out_dir, "prepare.json")))
    return summary, wall


# The libraries alone, in a fresh interpreter each (their thread counts are fixed at import).
LIBRARY_RUN = r"""
import json, sys, time
kind, model, corpus, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
if kind == "tokenizers":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(model)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # its fastest: no offsets
    start = time.perf_counter()
    for i in range(0, len(texts), 2048):
        encode(texts[i:i + 2048], add_special_tokens=False)
else:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model)
    start = time.perf_counter()
    for i in range(0, len(texts), 2048):
        sp.encode(texts[i:i + 2048], num_threads=threads)
print(time.perf_counter() - start)
"""


def run_library(kind, model, corpus, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    out = subprocess.run([sys.executable, "-c", LIBRARY_RUN, kind, model, corpus, str(threads)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    parser.add_argument("--mb", type=float, default=60)
    parser.add_argument("--shape", choices=["long", "short"], default="long")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--memory", default="", help="corpus sizes in MB for the peak-memory rows, e.g. 60,250,1000")
    parser.add_argument("--keep", help="keep the corpora and outputs in this directory")
    args = parser.parse_args()
    tmp = args.keep or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    doc_bytes = 6300 if args.shape == "long" else 313
    corpus = write_corpus(os.path.join(tmp, f"corpus-{args.shape}.jsonl"), args.mb, doc_bytes)
    megabytes = os.path.getsize(corpus) / 1e6
    count = sum(1 for _ in open(corpus, encoding="utf-8"))
    print(f"corpus: {megabytes:.1f} MB, {count} documents of {megabytes * 1e6 / count:.0f} B (mixed prose and code), "
          f"{args.cores} cores")
    hf = train_hf_tokenizer(corpus, os.path.join(tmp, "hf"))
    run_prepare(args.bin, corpus, None, args.cores, os.path.join(tmp, "sp"), ["--vocab_size", "4096", "--tokenizer_sample_mb", "16"])
    sp = os.path.join(tmp, "sp", "tokenizer.model")

    rows = []
    # moe-prepare's paths: a tokenizer.json runs natively unless MOE_HF_ENCODER=library asks for the
    # library's helpers (the path of the files the native encoder does not cover).
    paths = {"tokenizers": [("moe-prepare", {}), ("moe-prepare via the library", {"MOE_HF_ENCODER": "library"})],
             "sentencepiece": [("moe-prepare", {})]}
    for name, model, kind in (("tokenizer.json (byte-level BPE 6400)", hf, "tokenizers"),
                              ("SentencePiece BPE 4096", sp, "sentencepiece")):
        shards = set()
        for label, env in paths[kind]:
            for cores in sorted({1, args.cores}):
                out = os.path.join(tmp, f"out-{kind}-{len(shards)}-{cores}")
                summary, wall = run_prepare(args.bin, corpus, model, cores, out, env=env)
                shards.add(b"".join(open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))
                                    if f.endswith(".bin")))
                rows.append((name, f"{label}, {cores} worker{'s' if cores > 1 else ''}", cores, wall,
                             summary["peak_resident_bytes"] / 2**20))
        if len(shards) != 1:
            sys.exit(f"{name}: moe-prepare's paths and worker counts wrote different shards")
        for cores in sorted({1, args.cores}):
            rows.append((name, f"{kind} alone, {cores} thread{'s' if cores > 1 else ''}", cores,
                         run_library(kind, model, corpus, cores), None))
    print(f"\n{'tokenizer':38s} {'what':40s} {'MB/s':>7s} {'MB/s/core':>9s} {'vs 1 core':>9s} {'peak MiB':>8s}")
    one_core = {}
    for name, what, cores, seconds, peak in rows:
        rate = megabytes / seconds
        key = (name, what.split(",")[0])
        one_core.setdefault(key, rate)
        peak = f"{peak:8.0f}" if peak else ""
        print(f"{name:38s} {what:40s} {rate:7.2f} {rate / cores:9.2f} {rate / one_core[key]:8.2f}x {peak}")
    print("(the same shards from every moe-prepare row of a tokenizer; peak: moe-prepare's own, not its helpers')")

    if args.memory:
        print(f"\n{'corpus MB':>9s} {'moe-prepare peak MiB':>21s} {'seconds':>8s}  (SentencePiece, {args.cores} workers)")
        for mb in (float(m) for m in args.memory.split(",")):
            path = write_corpus(os.path.join(tmp, f"memory-{mb:.0f}.jsonl"), mb, doc_bytes, seed=2)
            summary, wall = run_prepare(args.bin, path, sp, args.cores, os.path.join(tmp, f"memory-{mb:.0f}"))
            print(f"{os.path.getsize(path) / 1e6:9.0f} {summary['peak_resident_bytes'] / 2**20:21.0f} {wall:8.1f}")
            os.remove(path)
    if not args.keep:
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
