#!/usr/bin/env python3
"""Writes a DeepSeek-V2-Lite-shaped model directory without weights, for measuring `kb serve`
with `deepseek.random_weights = true` on a machine that has no DeepSeek checkpoint:

  config.json            DeepSeek-V2-Lite's shape (27 layers, 64 routed experts, MLA rank 512)
  tokenizer.json         a real byte-level BPE (SmolLM2's, read from its GGUF in models/), so
                         passages and prompts take realistic token counts; DeepSeek's BOS/EOS
                         are added as special tokens
  tokenizer_config.json  DeepSeek-V2-Chat's chat template

Usage: scripts/gpu/lite_model_dir.py OUT_DIR [--gguf models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
Needs the `gguf` Python package (pip install gguf)."""
import argparse
import json
import os

from gguf import GGUFReader

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
TEMPLATE = ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
            "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
            "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
            "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
            "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
            "{{ 'Assistant:' }}{% endif %}")

LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
    "num_experts_per_tok": 6, "routed_scaling_factor": 1.0, "norm_topk_prob": False,
    "topk_method": "greedy", "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
    "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128, "v_head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "scoring_func": "softmax", "tie_word_embeddings": False, "attention_bias": False,
    "bos_token_id": 100000, "eos_token_id": 100001,
}


def field_strings(reader, name):
    f = reader.fields[name]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--gguf", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    a = ap.parse_args()
    reader = GGUFReader(a.gguf)
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    merges = field_strings(reader, "tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    # DeepSeek's ids for its special tokens (inside the 102,400 vocabulary, past SmolLM2's).
    specials = [(100000, BOS), (100001, EOS)]
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in specials]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    os.makedirs(a.out, exist_ok=True)
    json.dump(LITE, open(os.path.join(a.out, "config.json"), "w"), indent=1)
    json.dump(tokenizer, open(os.path.join(a.out, "tokenizer.json"), "w"), ensure_ascii=False)
    json.dump({"bos_token": BOS, "eos_token": {"content": EOS}, "chat_template": TEMPLATE},
              open(os.path.join(a.out, "tokenizer_config.json"), "w"), ensure_ascii=False)
    print(f"wrote {a.out}: {len(vocab)} BPE tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
