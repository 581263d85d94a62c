#!/usr/bin/env python3
"""The Python side of the interoperability test (tests/interop/interop_e2e.sh), run by tools/pytool.

  hf EXPORT_DIR REFERENCE TOLERANCE   transformers' AutoModelForCausalLM of the export against our
                                      outputs (tests/interop/reference_outputs.cpp): logits on random
                                      batches within TOLERANCE, greedy generation token for token
  minimind EXPORT_DIR REFERENCE TOLERANCE
                                      the .pth loads with torch.load(weights_only=True), holds exactly
                                      MiniMind2's keys with their shapes, loads with strict=True into
                                      MiniMind2's module structure (written here from the seeds) whose
                                      logits match ours within TOLERANCE
  same-parameters RUN_A RUN_B         the model tensors of two checkpoints (any layouts) are
                                      bit-identical
  byte-bpe CORPUS_JSONL OUT_DIR       trains a byte-level BPE tokenizer.json as MiniMind's is made,
                                      with tokenizer_config.json
  shard-ids DATA_DIR CORPUS_JSONL     moe-prepare's token shards hold, document by document, the ids
                                      the `tokenizers` library gives (val_fraction 0)
  minimind-state-dict OUT_PTH         a MiniMind2 state dict as its scripts save it ({k: v.half()})
  malicious-pth OUT_PTH MARKER        a .pth whose unpickling by Python would create MARKER
"""
import glob
import json
import math
import os
import sys

import torch


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def check_hf(export_dir, reference, tolerance):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ref = load_file(reference)
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(ref["tokens"]).logits
    diff = (logits - ref["logits"]).abs().max().item()
    scale = ref["logits"].abs().max().item()
    print(f"{type(model).__name__}: max |logits - ours| = {diff:.3e} (logits up to {scale:.2f}) over "
          f"{ref['tokens'].numel()} positions")
    if not diff <= float(tolerance):
        fail(f"logits differ by {diff} > {tolerance}")
    tokens = ref["prompt"]
    with torch.no_grad():
        for _ in range(ref["greedy"].shape[1]):  # argmax, no EOS stop: as our reference
            next_token = model(tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    ours, theirs = ref["greedy"][0].tolist(), tokens[0, ref["prompt"].shape[1]:].tolist()
    if ours != theirs:
        fail(f"greedy generation differs: ours {ours}, transformers {theirs}")
    print(f"greedy generation: the same {len(ours)} tokens")


def intermediate_of(config):
    """MiniMind2's FeedForward width: intermediate_size, or 64 * ceil(int(8 * hidden / 3) / 64)."""
    return config["intermediate_size"] or 64 * math.ceil(int(config["hidden_size"] * 8 / 3) / 64)


def minimind2_keys(config):
    """MiniMind2's state_dict keys and shapes (model/model_minimind.py of MiniMind2)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    head_dim = h // config["num_attention_heads"]
    inter = intermediate_of(config)
    keys = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    ffn = lambda p: {f"{p}.gate_proj.weight": [inter, h], f"{p}.up_proj.weight": [inter, h],
                     f"{p}.down_proj.weight": [h, inter]}
    for l in range(layers):
        p = f"model.layers.{l}"
        keys.update({f"{p}.self_attn.q_proj.weight": [config["num_attention_heads"] * head_dim, h],
                     f"{p}.self_attn.k_proj.weight": [config["num_key_value_heads"] * head_dim, h],
                     f"{p}.self_attn.v_proj.weight": [config["num_key_value_heads"] * head_dim, h],
                     f"{p}.self_attn.o_proj.weight": [h, config["num_attention_heads"] * head_dim],
                     f"{p}.input_layernorm.weight": [h], f"{p}.post_attention_layernorm.weight": [h]})
        if config["use_moe"]:
            keys[f"{p}.mlp.gate.weight"] = [config["n_routed_experts"], h]
            for e in range(config["n_routed_experts"]):
                keys.update(ffn(f"{p}.mlp.experts.{e}"))
            for s in range(config["n_shared_experts"]):
                keys.update(ffn(f"{p}.mlp.shared_experts.{s}"))
        else:
            keys.update(ffn(f"{p}.mlp"))
    return keys


class MiniMind2(torch.nn.Module):
    """MiniMind2's MiniMindForCausalLM as the seeds describe it, with its module names (so its
    state_dict keys are MiniMind2's): inference path, float32."""

    def __init__(self, c):
        super().__init__()
        nn = torch.nn
        self.c = c
        h, inter = c["hidden_size"], intermediate_of(c)
        head_dim = h // c["num_attention_heads"]

        def norm():
            m = nn.Module()
            m.weight = nn.Parameter(torch.ones(h))
            return m

        def ffn():
            m = nn.Module()
            m.gate_proj, m.up_proj = nn.Linear(h, inter, bias=False), nn.Linear(h, inter, bias=False)
            m.down_proj = nn.Linear(inter, h, bias=False)
            return m

        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], h)
        self.model.layers = nn.ModuleList()
        for _ in range(c["num_hidden_layers"]):
            block = nn.Module()
            block.self_attn = nn.Module()
            for name, out in (("q_proj", c["num_attention_heads"] * head_dim), ("k_proj", c["num_key_value_heads"] * head_dim),
                              ("v_proj", c["num_key_value_heads"] * head_dim)):
                setattr(block.self_attn, name, nn.Linear(h, out, bias=False))
            block.self_attn.o_proj = nn.Linear(c["num_attention_heads"] * head_dim, h, bias=False)
            block.input_layernorm, block.post_attention_layernorm = norm(), norm()
            if c["use_moe"]:
                block.mlp = nn.Module()
                block.mlp.gate = nn.Module()
                block.mlp.gate.weight = nn.Parameter(torch.empty(c["n_routed_experts"], h))
                block.mlp.experts = nn.ModuleList([ffn() for _ in range(c["n_routed_experts"])])
                block.mlp.shared_experts = nn.ModuleList([ffn() for _ in range(c["n_shared_experts"])])
            else:
                block.mlp = ffn()
            self.model.layers.append(block)
        self.model.norm = norm()
        self.lm_head = nn.Linear(h, c["vocab_size"], bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied

    def rms(self, m, x):
        return m.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]))

    @staticmethod
    def swiglu(m, x):
        return m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))

    def moe(self, m, x):
        c = self.c
        flat = x.reshape(-1, x.shape[-1])
        scores = torch.softmax(flat @ m.gate.weight.t(), dim=-1)
        weight, index = torch.topk(scores, k=c["num_experts_per_tok"], dim=-1, sorted=False)
        if c["num_experts_per_tok"] > 1 and c["norm_topk_prob"]:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(flat)
        for e, expert in enumerate(m.experts):
            rows, slot = torch.where(index == e)
            y.index_add_(0, rows, self.swiglu(expert, flat[rows]) * weight[rows, slot, None])
        for shared in m.shared_experts:
            y = y + self.swiglu(shared, flat)
        return y.view_as(x)

    def forward(self, ids):
        c = self.c
        b, t = ids.shape
        heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
        hd = c["hidden_size"] // heads
        freqs = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
        angles = torch.outer(torch.arange(t).float(), freqs)
        cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
        rotate = lambda v: torch.cat((-v[..., hd // 2:], v[..., : hd // 2]), dim=-1)
        x = self.model.embed_tokens(ids)
        for block in self.model.layers:
            a = self.rms(block.input_layernorm, x)
            q = block.self_attn.q_proj(a).view(b, t, heads, hd)
            k = block.self_attn.k_proj(a).view(b, t, kv, hd)
            v = block.self_attn.v_proj(a).view(b, t, kv, hd)
            q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
            k, v = (z.repeat_interleave(heads // kv, dim=2) for z in (k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                   v.transpose(1, 2), is_causal=True)
            x = x + block.self_attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            f = self.rms(block.post_attention_layernorm, x)
            x = x + (self.moe(block.mlp, f) if c["use_moe"] else self.swiglu(block.mlp, f))
        return self.lm_head(self.rms(self.model.norm, x))


def check_minimind(export_dir, reference, tolerance):
    from safetensors.torch import load_file
    with open(os.path.join(export_dir, "config.json")) as f:
        config = json.load(f)
    (path,) = glob.glob(os.path.join(export_dir, "*.pth"))
    state = torch.load(path, weights_only=True)
    expected = minimind2_keys(config)
    if set(state) != set(expected):
        fail(f"keys: missing {sorted(set(expected) - set(state))[:5]}, unexpected {sorted(set(state) - set(expected))[:5]}")
    for key, shape in expected.items():
        if list(state[key].shape) != shape:
            fail(f"{key} has shape {list(state[key].shape)}, MiniMind2's is {shape}")
    if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        fail("lm_head.weight is not the embedding (MiniMind2 ties them)")
    dtypes = sorted({str(v.dtype) for v in state.values()})
    print(f"{os.path.basename(path)}: torch.load(weights_only=True) gives MiniMind2's {len(expected)} keys with their "
          f"shapes, {dtypes}")
    model = MiniMind2(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    ref = load_file(reference)
    with torch.no_grad():
        diff = (model(ref["tokens"]) - ref["logits"]).abs().max().item()
    print(f"MiniMind2 structure, load_state_dict(strict=True): max |logits - ours| = {diff:.3e}")
    if not diff <= float(tolerance):
        fail(f"logits differ by {diff} > {tolerance}")


def model_tensors(run):
    from safetensors.torch import load_file
    step = os.path.join(run, "checkpoints", open(os.path.join(run, "checkpoints", "latest")).read().strip())
    tensors = {}
    for path in glob.glob(os.path.join(step, "model-*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def check_same_parameters(run_a, run_b):
    a, b = model_tensors(run_a), model_tensors(run_b)
    if set(a) != set(b):
        fail(f"different tensors: {sorted(set(a) ^ set(b))[:5]}")
    for name in a:
        if a[name].dtype != b[name].dtype or not torch.equal(a[name], b[name]):
            fail(f"{name} differs")
    print(f"the same {len(a)} tensors, bit for bit")


def documents(corpus_jsonl):
    with open(corpus_jsonl, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def byte_bpe(corpus_jsonl, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents(corpus_jsonl), trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    print(f"byte-level BPE of {tokenizer.get_vocab_size()} tokens")


def check_shard_ids(data_dir, corpus_jsonl):
    import numpy as np
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    eos = tokenizer.token_to_id("<|im_end|>")
    ids = []
    for path in sorted(glob.glob(os.path.join(data_dir, "train-*.bin"))):
        raw = open(path, "rb").read()
        width = int.from_bytes(raw[12:16], "little")
        ids += np.frombuffer(raw[32:], dtype=np.uint16 if width == 2 else np.uint32).tolist()
    expected = []
    for text in documents(corpus_jsonl):
        expected += tokenizer.encode(text, add_special_tokens=False).ids + [eos]
    if ids != expected:
        at = next(i for i, (x, y) in enumerate(zip(ids + [-1], expected + [-1])) if x != y)
        fail(f"shard ids differ from the tokenizers library's at token {at} of {len(expected)}")
    print(f"moe-prepare's {len(ids)} ids equal the tokenizers library's")


def minimind_state_dict(out_pth):
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
              "vocab_size": 300, "intermediate_size": None, "use_moe": True, "n_routed_experts": 4,
              "n_shared_experts": 1}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) * 0.05).half() for k, shape in minimind2_keys(config).items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    torch.save(state, out_pth)
    print(f"{out_pth}: {len(state)} tensors")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pth(out_pth, marker):
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "payload": RunsCode(marker)}, out_pth)


def main(argv):
    commands = {"hf": (check_hf, 3), "minimind": (check_minimind, 3), "same-parameters": (check_same_parameters, 2),
                "byte-bpe": (byte_bpe, 2), "shard-ids": (check_shard_ids, 2),
                "minimind-state-dict": (minimind_state_dict, 1), "malicious-pth": (malicious_pth, 2)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__)
        sys.exit(2)
    commands[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
