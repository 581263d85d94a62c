#!/usr/bin/env python3
"""moe-prepare's tokenizer.json path against the `tokenizers` library, document by document.

Byte-level BPE tokenizers of the four families the native encoder covers (MiniMind's and GPT-2's
ByteLevel split, Llama-3's and Qwen2's regex splits, Qwen2's NFC), and one it leaves to the library
(ByteLevel with add_prefix_space), are trained on the fortunes and an adversarial corpus
(multi-byte scripts, emoji sequences, combining marks, Unicode spaces and controls, NUL, mojibake,
runs of spaces and newlines, long digit runs, very long words, every special token's text). Each
prepares that corpus with 1 and 3 workers: the shards must be identical, and every document's ids
must equal tokenizer.encode(text, add_special_tokens=False).ids followed by EOS, and the log must
name the path that ran.
Usage: tools/pytool hf_prepare_check.py BIN_DIR
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PIECES = [
    "héllo wörld", "straße", "中文的文本处理", "日本語のテキスト", "한국어 텍스트", "Ελληνικά", "русский текст",
    "עברית", "العربية", "हिन्दी", "ไทย", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪🇯🇵", "🏳️‍🌈", "e\u0301", "a\u0300\u0301\u0302\u0303",
    "Z\u0351\u0352\u0357\u0358\u035b", "\n", "\n\n\n", "\r\n", "\t", "\t\t \t", "\u00a0", "\u2003", "\u3000",
    "\u0085", "\u2028", "\u200b", "\ufeff", "\u200d", "\ufffd", "\uffff", "\ufdd0", "\U0010ffff", "\ue000",
    "\u0000", "\u0001\u001f\u007f", "\\xc3\\x28", "Ã©tÃ©", "â€™", "\xc3\x28", "I'm", "DON'T", "we'LL",
    "they've", "'s", "''", "it's'd", "0", "123", "1234567", "3.14159", "1,000,000", "١٢٣", "①②",
    "def f(x):\n    return x**2  # comment\n", '{"key": [1, 2, 3]}', "<html><body>&amp;</body></html>",
    "<s>", "</s>", "<unk>", "<|endoftext", "im_end|>", "<|im_start|>user\nhi<|im_end|>",
    "\U000139c0русский", "\U000139c0 \U000139c0",  # a letter new in Unicode 16 (Oniguruma 6.9.10 knows it)
    # NFC by the library's Unicode 9.0 tables: a 9.0 mark reorders, later ones and a 13.0 composition do not
    "a\U0001e000\u0316", "x\u1df6\u0316", "x\u0d3b\u0316", "\U00011935\U00011930", "\u1100\u1161\u11a8", "\u212b",
] + SPECIALS


def random_code_points(rng, n):
    points = []
    while len(points) < n:
        c = rng.randint(0x1, 0x2FFFF)
        if not 0xD800 <= c <= 0xDFFF:  # surrogates are not text
            points.append(chr(c))
    return "".join(points)


def adversarial_documents(seed=20261202, count=1200):
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.55:
                parts.append(rng.choice(PIECES))
            elif r < 0.65:
                parts.append(" " * rng.randint(1, 300))
            elif r < 0.7:
                parts.append("\n" * rng.randint(1, 50))
            elif r < 0.75:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 60))))
            elif r < 0.8:
                parts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(100, 5000))))
            elif r < 0.9:
                parts.append(random_code_points(rng, rng.randint(1, 40)))
            else:
                parts.append(rng.choice(PIECES) * rng.randint(2, 20))
            if rng.random() < 0.5:
                parts.append(" ")
        docs.append("".join(parts))
    docs.append("".join(SPECIALS))
    for s in SPECIALS:
        docs += [s, " " + s + " x", s + s]
    return docs


def build_tokenizer(family, texts, directory):
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if family in ("minimind", "gpt2"):
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex inside
    elif family == "prefix-space":  # outside the native encoder: the library runs it
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif family == "llama3":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level])
    else:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if family in ("gpt2", "prefix-space") else SPECIALS
    trainer = trainers.BpeTrainer(vocab_size=1500 if family != "minimind" else 6400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    os.makedirs(directory)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    eos = "<|endoftext|>" if family in ("gpt2", "prefix-space") else "<|im_end|>"
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": eos, "bos_token": eos if family in ("gpt2", "prefix-space") else "<|im_start|>"}, f)
    return tokenizer, tokenizer.token_to_id(eos)


def read_shards(directory):
    tokens = []
    for name in sorted(n for n in os.listdir(directory) if n.startswith("train-") and n.endswith(".bin")):
        data = open(os.path.join(directory, name), "rb").read()
        width = struct.unpack_from("<I", data, 12)[0]
        tokens += list(struct.unpack_from("<%d%s" % ((len(data) - 32) // width, "H" if width == 2 else "I"), data, 32))
    return tokens


def fail(message):
    print(f"hf_prepare_check: FAILED: {message}")
    sys.exit(1)


def main(bin_dir):
    with tempfile.TemporaryDirectory() as tmp:
        check(bin_dir, tmp)
    print("hf_prepare_check: passed")


def check(bin_dir, tmp):
    docs = adversarial_documents()
    fortunes = "/usr/share/games/fortunes"
    texts = list(docs)
    if os.path.isdir(fortunes):
        for name in sorted(os.listdir(fortunes))[:10]:
            path = os.path.join(fortunes, name)
            if not os.path.islink(path) and not name.endswith(".dat"):
                texts += open(path, encoding="utf-8", errors="replace").read().split("\n%\n")
    corpus = os.path.join(tmp, "adversarial.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):  # escaped and raw UTF-8 lines, both
            f.write(json.dumps({"text": d}, ensure_ascii=i % 2 == 0) + "\n")
    kept = [d for d in docs if d.strip(" \t\r\n")]  # the reader skips blank documents
    for family in ("minimind", "gpt2", "llama3", "qwen2", "prefix-space"):
        path = "the library" if family == "prefix-space" else "the native byte-level BPE (C++"
        tokenizer, eos = build_tokenizer(family, texts, os.path.join(tmp, family))
        outputs = []
        for workers in (1, 3):
            out = os.path.join(tmp, f"{family}-{workers}")
            run = subprocess.run([os.path.join(bin_dir, "moe-prepare"), "--input", corpus, "--tokenizer",
                                  os.path.join(tmp, family, "tokenizer.json"), "--val_fraction", "0", "--workers",
                                  str(workers), "--batch_kb", "16", "--quiet", "--out_dir", out],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                fail(f"{family}: moe-prepare failed:\n{run.stdout}\n{run.stderr}")
            if f"encoding on {workers} workers with {path}" not in run.stderr.replace("Hugging Face `tokenizers`", "the library"):
                fail(f"{family}: the log does not name {path} as the tokenizer.json path:\n{run.stderr}")
            if family == "prefix-space" and "does not reproduce ByteLevel with add_prefix_space" not in run.stderr:
                fail(f"{family}: the log does not say why the native encoder does not run:\n{run.stderr}")
            outputs.append(read_shards(out))
        if outputs[0] != outputs[1]:
            fail(f"{family}: 1 and 3 workers wrote different tokens")
        got, at = outputs[0], 0
        for i, text in enumerate(kept):
            want = tokenizer.encode(text, add_special_tokens=False).ids + [eos]
            if got[at:at + len(want)] != want:
                fail(f"{family}: document {i} {text[:40]!r}: moe-prepare {got[at:at + 12]}..., tokenizers {want[:12]}...")
            at += len(want)
        if at != len(got):
            fail(f"{family}: {len(got) - at} tokens more than the documents'")
        print(f"hf_prepare_check: {family}: {len(kept)} documents, {len(got)} tokens, the library's ids through {path.split(' (')[0]}, "
              "1 = 3 workers")


if __name__ == "__main__":
    main(sys.argv[1])
