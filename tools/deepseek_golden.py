#!/usr/bin/env python3
"""Golden fixtures for lightcore's DeepSeek code, from Hugging Face transformers' DeepseekV3 and
DeepseekV2 implementations (the reference for every detail of the model).

Writes, into --out (default tests/data/deepseek/):
  rope_golden.json     YaRN rotary embedding of R1's and V2-Lite's rope_scaling: inputs q and k
                       (bf16-representable), positions, transformers' rotated outputs (fp32),
                       cos/sin rows, and the attention's softmax scale.
  <name>_golden.json   for each checkpoint directory given with --model NAME=DIR (written by
                       tools/random_checkpoint, so that C++ regenerates the same weights from the
                       config and the seed): fixed prompts, the fp32 logits at every prompt position, and
                       a 16-token greedy continuation (full recomputation each step, no cache)
                       with each step's top-1 margin (a test compares tokens where the margin
                       exceeds its error bound).
                       FP8 checkpoints are dequantised with their 128x128 block scales first.

Run where torch and transformers are installed (the GPU machine); never needed at run time:
  python3 tools/deepseek_golden.py --model tiny_v3=DIR --model tiny_v3_fp8=DIR --model tiny_v2=DIR
(DIRs from random_checkpoint --seed 7 --config tests/data/configs/tiny_deepseek_v3.json
 [--dtype bf16], and tiny_deepseek_v2.json).
"""
import argparse
import json
import math
import os
import sys

import torch


def rope_golden():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    cases = {
        "r1": {"factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1,
               "original_max_position_embeddings": 4096, "type": "yarn"},
        "v2_lite": {"factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32,
                    "beta_slow": 1, "original_max_position_embeddings": 4096, "type": "yarn"},
    }
    positions = [0, 1, 7, 255, 4095, 4096, 32767, 65535]
    heads = 3
    gen = torch.Generator().manual_seed(20261124)
    out = {"positions": positions, "heads": heads, "cases": {}}
    for name, scaling in cases.items():
        cfg = DeepseekV3Config(rope_scaling=dict(scaling), rope_theta=10000.0,
                               max_position_embeddings=163840, qk_rope_head_dim=64,
                               qk_nope_head_dim=128, v_head_dim=128, num_attention_heads=heads,
                               hidden_size=256, kv_lora_rank=512, q_lora_rank=192,
                               num_hidden_layers=1)
        cfg._attn_implementation = "eager"
        rotary = m.DeepseekV3RotaryEmbedding(config=cfg)
        t = len(positions)
        # bf16-representable inputs, so that lightcore's bf16 input is exactly this input.
        q = torch.randn(1, heads, t, 64, generator=gen).to(torch.bfloat16).float()
        k = torch.randn(1, 1, t, 64, generator=gen).to(torch.bfloat16).float()
        pos = torch.tensor([positions])
        cos, sin = rotary(q, pos)
        q_out, k_out = m.apply_rotary_pos_emb_interleave(q, k, cos.float(), sin.float())
        attn = m.DeepseekV3Attention(cfg, layer_idx=0)
        out["cases"][name] = {
            "rope_scaling": scaling,
            "rope_theta": 10000.0,
            "softmax_scale": float(attn.scaling),
            "attention_scaling": float(rotary.attention_scaling),
            "q": q[0].permute(1, 0, 2).reshape(-1).tolist(),       # [T, H, 64]
            "k": k[0, 0].reshape(-1).tolist(),                     # [T, 64]
            "q_out": q_out[0].permute(1, 0, 2).reshape(-1).tolist(),
            "k_out": k_out[0, 0].reshape(-1).tolist(),
            "cos": cos[0].reshape(-1).tolist(),                    # [T, 64]
            "sin": sin[0].reshape(-1).tolist(),
        }
    return out


def dequantised_state_dict(path):
    from safetensors.torch import load_file

    files = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(path, f)))
    out = {}
    for name, t in sd.items():
        if name.endswith(".weight_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = sd[name + "_scale_inv"].float()
            n, k = t.shape
            full = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
            out[name] = t.float() * full
        else:
            out[name] = t.float()
    return out


def model_golden(path, prompt_lengths=(1, 5, 17, 40), new_tokens=16):
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    # transformers loads the checkpoint through its own path (from_pretrained, which also fuses the
    # per-expert weights), from a dequantised fp32 copy: FP8 weights times their block scales.
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(raw)
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = "float32"
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f)
        save_file(dequantised_state_dict(path), os.path.join(tmp, "model.safetensors"))
        model, info = AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: [n for n in v if "rotary" not in n] for k, v in info.items() if v}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        sys.exit(f"{path}: transformers did not load every tensor: {bad}")
    model.eval()
    gen = torch.Generator().manual_seed(42)
    vocab = raw["vocab_size"]
    cases = []
    with torch.no_grad():
        for n in prompt_lengths:
            ids = torch.randint(2, vocab, (n,), generator=gen).tolist()
            all_logits = model(torch.tensor([ids])).logits[0].float()  # [n, vocab]
            seq = list(ids)
            greedy, margins = [], []
            for _ in range(new_tokens):
                step = model(torch.tensor([seq])).logits[0, -1].float()
                top2 = torch.topk(step, 2)
                greedy.append(int(top2.indices[0]))
                margins.append(float(top2.values[0] - top2.values[1]))
                seq.append(greedy[-1])
            cases.append({"prompt": ids,
                          "logits": [[float(f"{v:.6g}") for v in row] for row in all_logits.tolist()],
                          "greedy": greedy, "greedy_margins": margins})
    return {"config": raw, "cases": cases}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(here), "tests", "data", "deepseek"))
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import transformers
    meta = {"torch": torch.__version__, "transformers": transformers.__version__}
    rope = rope_golden()
    rope["meta"] = meta
    with open(os.path.join(args.out, "rope_golden.json"), "w") as f:
        json.dump(rope, f)
    print("wrote rope_golden.json")
    for spec in args.model:
        name, path = spec.split("=", 1)
        g = model_golden(path)
        g["meta"] = meta
        with open(os.path.join(args.out, f"{name}_golden.json"), "w") as f:
            json.dump(g, f)
        print(f"wrote {name}_golden.json: smallest greedy margins",
              [round(min(c["greedy_margins"]), 4) for c in g["cases"]])


if __name__ == "__main__":
    main()
