#!/usr/bin/env python3
"""Hugging Face tokenizers for the C++ programs, through the `tokenizers` package.

  hf_tokenizer.py serve TOKENIZER_JSON          a co-process: one JSON request per stdin line,
                                                one JSON answer per stdout line (trainer/data/hf_tokenizer.h)
  hf_tokenizer.py encode-batches TOKENIZER_JSON a co-process for moe-prepare's workers: binary batches
                                                (HfBatchEncoder in trainer/data/hf_tokenizer.h),
                                                encoded with encode_batch_fast on one thread
  hf_tokenizer.py export TOKENIZER OUT_DIR      write tokenizer.json and tokenizer_config.json that
                                                transformers' AutoTokenizer loads, from a run's
                                                tokenizer.model (SentencePiece) or tokenizer.json
  hf_tokenizer.py check TOKENIZER HF_DIR TEXT_FILE
                                                encode and decode every line of TEXT_FILE with both
                                                and print the first difference (exit 1) or 'same'

Run through tools/pytool, which puts the tools that `launch/setup.sh --python` installs on the path.
A run's SentencePiece model is exported as the equivalent byte-fallback BPE: the text is taken as
is (identity normalisation), '▁' marks spaces with one prepended to the whole text, user-defined
pieces (the newline) match anywhere, and unknown characters become byte tokens.
"""
import json
import os
import shutil
import sys


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def special_token_name(value):
    """tokenizer_config.json writes a token as "text" or {"content": "text", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def special_ids(tokenizer, config_path):
    """(bos, eos, unk) ids: from tokenizer_config.json beside tokenizer.json, else common names."""
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)

    def find(key, candidates):
        name = special_token_name(config.get(key))
        names = [name] if name else candidates
        for n in names:
            i = tokenizer.token_to_id(n)
            if i is not None:
                return i
        return -1

    bos = find("bos_token", ["<s>", "<|im_start|>", "<|begin_of_text|>"])
    eos = find("eos_token", ["</s>", "<|im_end|>", "<|endoftext|>", "<|end_of_text|>"])
    unk = find("unk_token", ["<unk>", "<|endoftext|>"])
    return bos, eos, unk


def load_json_tokenizer(path):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the library's message says what is wrong with the file
        fail(f"cannot load the Hugging Face tokenizer '{path}': {e}")


def serve(path):
    tokenizer = load_json_tokenizer(path)
    bos, eos, unk = special_ids(tokenizer, os.path.join(os.path.dirname(path), "tokenizer_config.json"))
    if eos < 0:
        fail(f"'{path}': no EOS token found; put a tokenizer_config.json with \"eos_token\" beside it")
    out = sys.stdout
    out.write(json.dumps({"vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
                          "bos_id": bos, "eos_id": eos, "unk_id": unk}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "encode" in request:
            answer = tokenizer.encode(request["encode"], add_special_tokens=False).ids
        elif "decode" in request:
            answer = tokenizer.decode(request["decode"], skip_special_tokens=False)
        else:
            fail(f"unknown request {line.strip()}")
        out.write(json.dumps(answer) + "\n")
        out.flush()


def read_exactly(stream, n):
    data = stream.read(n)
    if len(data) != n:
        fail(f"the request ended after {len(data)} of {n} bytes")
    return data


def encode_batches(path):
    """uint32 n, n x uint32 lengths, texts -> uint32 n, n x uint32 counts, uint32 ids (little endian)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: moe-prepare runs one helper per core
    import struct
    from array import array
    tokenizer = load_json_tokenizer(path)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # the same ids, no offsets
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    while True:
        head = stdin.read(4)  # blocks until 4 bytes or the end of the input
        if not head:
            return
        if len(head) < 4:
            fail("a request ended inside its header")
        (n,) = struct.unpack("<I", head)
        lengths = array("I")
        lengths.frombytes(read_exactly(stdin, 4 * n))
        payload = read_exactly(stdin, sum(lengths))
        texts, at = [], 0
        for length in lengths:  # the corpus reader has checked the UTF-8 already; as the JSON path would
            texts.append(payload[at:at + length].decode("utf-8", "replace"))
            at += length
        encodings = encode(texts, add_special_tokens=False)
        counts, ids = array("I"), array("I")
        for e in encodings:
            doc = e.ids  # a new list at every access
            counts.append(len(doc))
            ids.extend(doc)
        out.write(struct.pack("<I", n) + counts.tobytes() + ids.tobytes())
        out.flush()


def sentencepiece_as_hf(model_path):
    """The tokenizers.Tokenizer that encodes and decodes exactly as the SentencePiece BPE model."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    vocab = {p: i for i, p in enumerate(pieces)}
    plain = [i for i in range(n) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))]
    user_defined = [i for i in plain if sp.is_user_defined(i)] if hasattr(sp, "is_user_defined") else []
    # SentencePiece's BPE merges the pair whose result scores highest: a merge (a, b) -> a+b ranks
    # by the id of a+b (ids follow the scores).
    merges = []
    for i in plain:
        piece = pieces[i]
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                merges.append((i, vocab[a], vocab[b], a, b))
    merges.sort()
    unk = pieces[sp.unk_id()] if sp.unk_id() >= 0 else None
    model = models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk, byte_fallback=True,
                       fuse_unk=True)
    tokenizer = Tokenizer(model)
    # The whole text is normalised first (normalised added tokens are matched afterwards), so the
    # '▁' prepended to the text comes before a leading newline, as in SentencePiece.
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    specials = [pieces[i] for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    tokenizer.add_tokens([AddedToken(pieces[i], special=False, normalized=True) for i in user_defined])
    names = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    return tokenizer, {k: (pieces[i] if i >= 0 else None) for k, i in names.items()}


def tokenizer_config(bos, eos, unk):
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 1000000000}
    for key, value in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk)):
        if value is not None:
            config[key] = value
    return config


def export(source, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    if source.endswith(".model"):
        tokenizer, names = sentencepiece_as_hf(source)
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        config = tokenizer_config(names["bos"], names["eos"], names["unk"])
    else:
        tokenizer = load_json_tokenizer(source)
        shutil.copyfile(source, os.path.join(out_dir, "tokenizer.json"))
        bos, eos, unk = special_ids(tokenizer, os.path.join(os.path.dirname(source), "tokenizer_config.json"))
        name = lambda i: tokenizer.id_to_token(i) if i >= 0 else None
        config = tokenizer_config(name(bos), name(eos), name(unk))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def check(source, hf_dir, text_file):
    """Every line of text_file: ids of the run's tokenizer == ids of transformers' AutoTokenizer."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(hf_dir)
    if source.endswith(".model"):
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=source)
        ours_encode, ours_decode = sp.encode, sp.decode
    else:
        tok = load_json_tokenizer(source)
        ours_encode = lambda t: tok.encode(t, add_special_tokens=False).ids
        ours_decode = tok.decode
    with open(text_file, encoding="utf-8") as f:
        texts = f.read().split("\n%\n")
    for text in texts:
        a, b = ours_encode(text), hf(text)["input_ids"]
        if a != b:
            print(f"different ids for {text[:60]!r}: ours {a[:16]}... transformers {b[:16]}...")
            sys.exit(1)
        if hf.decode(b) != ours_decode(a):
            print(f"different decoding of {text[:60]!r}: {hf.decode(b)[:60]!r}")
            sys.exit(1)
    print(f"same ids and text for {len(texts)} texts, {sum(len(t) for t in texts)} characters")


def main(argv):
    commands = {"serve": (serve, 1), "encode-batches": (encode_batches, 1), "export": (export, 2), "check": (check, 3)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    commands[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
