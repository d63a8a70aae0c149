#!/usr/bin/env python3
"""Reference side of the DeepSeek-V2 GPU checks, run on the GPU machine (PyTorch + transformers).

For a named shape it builds transformers' DeepseekV2ForCausalLM with random bf16 weights on the
GPU, saves the checkpoint (safetensors shards + config.json) for kb's loader, and writes
transformers' logits for a fixed random prompt. With --bench it also times transformers'
prefill and batch-1 greedy decode and measures the device's copy bandwidth.

Weights: std 1/sqrt(fan_in) for every matrix (unit-scale activations, so logits and routing
are far from the degenerate near-uniform values of the 0.02 default), ones for norms.
"""
import argparse, json, math, os, sys, time

import numpy as np
import torch
import transformers
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

ROPE = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, moe_intermediate_size=64,
                 num_hidden_layers=4, num_attention_heads=4, n_routed_experts=16, num_experts_per_tok=4,
                 n_shared_experts=2, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                 v_head_dim=32),
    "lite": dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                 num_hidden_layers=27, num_attention_heads=16, n_routed_experts=64, num_experts_per_tok=6,
                 n_shared_experts=2, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                 v_head_dim=128),
}


def config_dict(shape, layers=None):
    d = dict(SHAPES[shape])
    if layers:
        d["num_hidden_layers"] = layers
    d.update(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", num_key_value_heads=d["num_attention_heads"],
             q_lora_rank=None, first_k_dense_replace=1, moe_layer_freq=1, routed_scaling_factor=1.0,
             norm_topk_prob=False, topk_method="greedy", n_group=1, topk_group=1, scoring_func="softmax",
             hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000.0,
             rope_scaling=dict(ROPE), tie_word_embeddings=False, attention_bias=False, bos_token_id=100000,
             eos_token_id=100001, torch_dtype="bfloat16")
    return d


def hf_config(cfg_d):
    """DeepseekV2Config from DeepSeek's config.json fields; transformers 5 keeps rope settings in
    rope_parameters and (strict dataclass) may refuse fields it does not know."""
    kw = {k: v for k, v in cfg_d.items() if k not in ("architectures", "model_type", "torch_dtype")}
    fields = getattr(DeepseekV2Config, "__dataclass_fields__", None)
    if fields and "rope_parameters" in fields:
        rp = dict(kw.pop("rope_scaling"))
        rp["rope_type"] = rp.pop("type")
        rp["rope_theta"] = kw.pop("rope_theta")
        kw["rope_parameters"] = rp
    if fields:
        dropped = [k for k in kw if k not in fields]
        kw = {k: v for k, v in kw.items() if k in fields}
        if dropped:
            print(f"config fields transformers does not take: {dropped}", flush=True)
    return DeepseekV2Config(**kw)


def build(cfg_d, seed):
    cfg = hf_config(cfg_d)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = DeepseekV2ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    # .to(bf16) also rounds the rotary inverse frequencies to bf16 (0.3% off); rebuild them in f32
    # as a bf16 checkpoint loaded with from_pretrained would have them.
    rot = model.model.rotary_emb
    model.model.rotary_emb = type(rot)(config=model.config, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                fan_in = p.shape[-1]
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
        model.model.embed_tokens.weight.normal_(0.0, 1.0, generator=g)
    return model


def reference_scale(cfg_d):
    """DeepSeek's own code scales softmax by mscale(all_dim)^2 under YaRN."""
    qk = cfg_d["qk_nope_head_dim"] + cfg_d["qk_rope_head_dim"]
    r = cfg_d["rope_scaling"]
    m = 0.1 * r["mscale_all_dim"] * math.log(r["factor"]) + 1.0 if r["factor"] > 1 else 1.0
    return qk ** -0.5 * m * m


@torch.no_grad()
def logits_of(model, tokens):
    ids = torch.tensor([tokens], device="cuda")
    return model(input_ids=ids).logits[0].float().cpu().numpy()


def sync_time(fn, reps):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


@torch.no_grad()
def bench(model, vocab, steps):
    out = {}
    for n in (512, 2048):
        ids = torch.randint(0, vocab, (1, n), device="cuda")
        dt = sync_time(lambda: model(input_ids=ids, logits_to_keep=1), 3)
        out[f"prefill_{n}_tok_s"] = n / dt
    ids = torch.randint(0, vocab, (1, 32), device="cuda")
    from transformers import DynamicCache
    def decode(nsteps):
        cache = DynamicCache(config=model.config)
        o = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = o.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(nsteps):
            o = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = o.logits[:, -1:].argmax(-1)
            nxt.item()  # greedy: the host needs the token, as a server does
        return (time.perf_counter() - t) / nsteps
    decode(2)
    dt = decode(steps)
    out["decode_b1_ms_per_step"] = dt * 1e3
    out["decode_b1_tok_s"] = 1.0 / dt
    # Device memory bandwidth: copy 4 GiB.
    x = torch.empty(2 * 1024**3, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    dt = sync_time(lambda: y.copy_(x), 10)
    out["copy_bandwidth_GBps"] = 2 * x.numel() * 2 / dt / 1e9
    del x, y
    return out


@torch.no_grad()
def gen_bench(model, vocab, batches, prompt, new):
    """transformers' generate at each batch size: greedy, `new` tokens after a `prompt`-token
    prompt, EOS ignored. Decode rate = tokens after the first / (total - time to first token)."""
    out = {}
    for b in batches:
        ids = torch.randint(0, vocab, (b, prompt), device="cuda")
        mask = torch.ones_like(ids)
        kw = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0)
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        torch.cuda.synchronize(); t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        torch.cuda.synchronize(); first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize(); total = time.perf_counter() - t
        out[str(b)] = {"first_token_s": first, "total_s": total,
                       "decode_tok_s": b * (new - 1) / max(total - first, 1e-9),
                       "end_to_end_tok_s": b * new / total}
        print(f"transformers generate batch {b}: first {first:.2f} s, total {total:.2f} s, "
              f"decode {out[str(b)]['decode_tok_s']:.1f} tok/s", flush=True)
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--gen-batches", help="comma-separated batch sizes for transformers' generate")
    ap.add_argument("--gen-prompt", type=int, default=1024)
    ap.add_argument("--gen-new", type=int, default=128)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cfg_d = config_dict(a.shape, a.layers)
    t0 = time.time()
    model = build(cfg_d, a.seed)
    report = {"shape": a.shape, "layers": cfg_d["num_hidden_layers"], "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "params": sum(p.numel() for p in model.parameters()), "build_s": time.time() - t0}
    rng = np.random.default_rng(a.seed)
    tokens = [int(t) for t in rng.integers(0, cfg_d["vocab_size"], a.seq)]
    json.dump(tokens, open(os.path.join(a.out, "tokens.json"), "w"))

    rot = model.model.rotary_emb
    np.save(os.path.join(a.out, "inv_freq.npy"), rot.inv_freq.float().cpu().numpy())
    report["rope_attention_scaling"] = float(rot.attention_scaling)
    report["rope_parameters"] = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None)
    attn = [m for m in model.modules() if type(m).__name__ == "DeepseekV2Attention"]
    native = attn[0].scaling
    want = reference_scale(cfg_d)
    report["softmax_scale_transformers"] = native
    report["softmax_scale_deepseek"] = want
    np.save(os.path.join(a.out, "logits_native.npy"), logits_of(model, tokens))
    if abs(native - want) > 1e-9:
        # transformers' port omits the YaRN mscale^2 on the softmax scale that DeepSeek's code
        # applies; compare against both, the DeepSeek-scaled one first.
        for m in attn:
            m.scaling = want
        np.save(os.path.join(a.out, "logits.npy"), logits_of(model, tokens))
        report["scale_patched"] = True
    else:
        os.replace(os.path.join(a.out, "logits_native.npy"), os.path.join(a.out, "logits.npy"))
        report["scale_patched"] = False

    if not a.no_save:
        t0 = time.time()
        model.save_pretrained(a.out, safe_serialization=True, max_shard_size="4GB")
        # kb's loader reads config.json as DeepSeek publishes it; keep ours (transformers may
        # rewrite rope fields).
        json.dump(cfg_d, open(os.path.join(a.out, "config.json"), "w"), indent=1)
        report["save_s"] = time.time() - t0
        names = json.load(open(os.path.join(a.out, "model.safetensors.index.json")))["weight_map"] \
            if os.path.exists(os.path.join(a.out, "model.safetensors.index.json")) else {}
        report["saved_expert_layout"] = "fused" if any("experts.gate_up_proj" in n for n in names) else "per-expert"
    if a.shape == "tiny":
        # f32 reference from the same (bf16-valued) weights: kb runs f32 on the GPU against it.
        model.float()
        np.save(os.path.join(a.out, "logits_f32.npy"), logits_of(model, tokens))
        model.to(torch.bfloat16)
    if a.bench:
        for m in attn:
            m.scaling = native
        report["bench"] = bench(model, cfg_d["vocab_size"], a.decode_steps)
    if a.gen_batches:
        for m in attn:
            m.scaling = native
        batches = [int(b) for b in a.gen_batches.split(",")]
        report["generate"] = gen_bench(model, cfg_d["vocab_size"], batches, a.gen_prompt, a.gen_new)
    print("REF " + json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
