"""Helpers for benches/gpu/run.sh on the GPU machine (torch + transformers, no network).

  make OUT [NAME..]    random-weight LLaMA folders (bf16 safetensors + config.json) made on the GPU:
                       smol (SmolLM2-135M shape, real tokenizer from .gpu/), llama-1b (Llama-3.2-1B
                       shape), llama-7b (Llama-2-7B / Vicuna-7B shape); all three unless named
  logits DIR IDS OUT [DTYPE]  transformers' own LlamaForCausalLM logits (f32: the independent
                       reference; bfloat16: how far bf16 alone moves them), written as f32
  compare REF [--gate G] [--base F] A [B..]   top-1 agreement and mean KL(ref || x) per file, as
                       JSON lines, each judged by the gate named before it (`--gate` applies to the
                       files after it; a missing or malformed file is a failure of its own line):
                         f32    top-1 >= 0.99 and mean KL < 1e-6 (f32 against the f32 reference:
                                only summation order differs, so a kernel bug shows)
                         bf16   top-1 where the reference's lead is clear >= 0.95 and mean KL below
                                5x that of --base F (transformers' own bf16 logits), at least 1e-5;
                                1e-4 when F is missing
                         loose  top-1 >= 0.95 and mean KL < 0.02 (the default: CPU against CUDA on a
                                GGUF, where neither side is the truth)
  bandwidth [DIR..]    device-to-device copy bandwidth (GB/s), and per model folder the bytes a
                       batch-1 decode step reads (its safetensors' weights, less the input
                       embedding table where it is not also the LM head: a step reads only the
                       looked-up rows; KV cache not counted) / that bandwidth = the roofline
  eager DIR            transformers eager generate: batch 1 and 32, 128 prompt + 256 new tokens
                       (as run.sh's camelid bench), its attention implementation named
  steps LOG NAME [GRAPHS]   the server's step trace (RUST_LOG camelid_engine::step=debug): per
                       batch size of pure decode steps, the median step and forward ms, as JSON
                       lines; then its CUDA graphs (RUST_LOG ...cuda_graph=debug): captured, failed,
                       launches_est (the server logs no launch count: pure decode steps from the
                       first capture on, while none had failed) and graphs_valid (GRAPHS=1: some
                       captured, none failed; GRAPHS=0: none captured), also on each step line
  health URL [PID]     waits up to 120 s for URL to answer 200 (exit 1 if not, or once PID is gone)

CAMELID_TORCH_DEVICE=cpu runs make and logits on the CPU (benches/gpu/cpu-dryrun.sh).
"""
import json
import os
import shutil
import sys
import time

import torch

DEVICE = os.environ.get("CAMELID_TORCH_DEVICE", "cuda")

SHAPES = {
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0, tie_word_embeddings=False),
}


def make(out, *names):
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, shape in SHAPES.items():
        if names and name not in names:
            continue
        d = os.path.join(out, name)
        # Done only once the weights are complete: save_pretrained writes config.json first,
        # so a save cut off by its timeout must be made again, not skipped.
        if os.path.exists(os.path.join(d, "done")):
            continue
        torch.manual_seed(0)
        cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, dtype="bfloat16", **shape)
        with torch.device(DEVICE):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        # Init std 0.02 everywhere keeps activations sane through every layer. (transformers 5
        # writes its rope as `rope_parameters`: camelid reads it, see config.rs.)
        model.save_pretrained(d)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        if name == "smol" and os.path.exists(".gpu/tokenizer.json"):
            shutil.copy(".gpu/tokenizer.json", d)
        open(os.path.join(d, "done"), "w").close()
        print(f"made {d}", flush=True)


def load_hf(d, dtype):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(d, dtype=dtype).to(DEVICE).eval()


def logits(d, ids, out, dtype="float32"):
    # The f32 reference in full f32 (no TF32 matmuls): the f32 gate is tight.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = load_hf(d, getattr(torch, dtype))
    x = torch.tensor([[int(i) for i in ids.split(",")]], device=DEVICE)
    with torch.no_grad():
        y = model(x).logits[0].float().cpu().numpy()
    y.astype("<f4").tofile(out)
    print(f"{y.shape[0]} x {y.shape[1]} -> {out}")


GATES = ("f32", "bf16", "loose")
KL_BF16_TIMES, KL_BF16_FLOOR, KL_BF16_NO_BASE = 5.0, 1e-5, 1e-4


def read_logits(f, vocab, rows=None):
    import numpy as np

    x = np.fromfile(f, dtype="<f4")
    if x.size == 0 or x.size % vocab:
        raise ValueError(f"{x.size} floats, not rows of {vocab}")
    x = x.reshape(-1, vocab).astype(np.float64)
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{x.shape[0]} rows, the reference has {rows}")
    return x


def compare(ref, args):
    import numpy as np

    vocab = int(os.environ["VOCAB"])
    files, gate, base = [], "loose", None
    it = iter(args)
    for a in it:
        if a == "--gate":
            gate = next(it)
            assert gate in GATES, gate
        elif a == "--base":
            base = next(it)
        else:
            files.append((a, gate))
    try:
        r = read_logits(ref, vocab)
        lr = r - np.logaddexp.reduce(r, axis=1, keepdims=True)
        # Positions whose reference top-1 leads its runner-up by more than bf16's rounding of
        # a logit (~0.4 % of its size): there a flip is an error, not a near-tie.
        top2 = np.sort(r, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.01 * np.abs(top2[:, 1]).clip(min=1.0)
    except Exception as e:
        for f, g in files:
            print(json.dumps({"file": f, "reference": ref, "gate": g, "error": f"reference: {e}", "pass": False}))
        return

    def stats(f):
        x = read_logits(f, vocab, r.shape[0])
        lx = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
        same = r.argmax(1) == x.argmax(1)
        # Where a clear lead flipped: the position, the reference's lead and the file's top-2.
        flips = []
        for i in np.nonzero(clear & ~same)[0][:5]:
            xs = np.sort(x[i])[-2:]
            flips.append({"pos": int(i), "ref_lead": float(top2[i, 1] - top2[i, 0]),
                          "ref_top": int(r[i].argmax()), "top": int(x[i].argmax()),
                          "lead": float(xs[1] - xs[0]), "ref_logit_of_top": float(r[i, x[i].argmax()])})
        return {"top1_agreement": float(same.mean()), "clear_flips": flips,
                "clear_positions": int(clear.sum()),
                "top1_agreement_clear": float(same[clear].mean()) if clear.any() else None,
                "mean_kl": float((np.exp(lr) * (lr - lx)).sum(1).mean())}

    base_kl = None
    if base is not None:
        try:
            base_kl = stats(base)["mean_kl"]
        except Exception:
            pass
    for f, g in files:
        row = {"file": f, "reference": ref, "gate": g}
        try:
            row.update(stats(f))
        except Exception as e:
            row.update({"error": str(e), "pass": False})
            print(json.dumps(row))
            continue
        kl, top1, clear_top1 = row["mean_kl"], row["top1_agreement"], row["top1_agreement_clear"]
        if g == "f32":
            row.update(top1_min=0.99, kl_bound=1e-6)
            ok = top1 >= 0.99 and kl < 1e-6
        elif g == "bf16":
            bound = KL_BF16_NO_BASE if base_kl is None else max(KL_BF16_TIMES * base_kl, KL_BF16_FLOOR)
            row.update(top1_clear_min=0.95, kl_bound=bound, base=base, base_kl=base_kl)
            ok = clear_top1 is not None and clear_top1 >= 0.95 and kl < bound
        else:
            row.update(top1_min=0.95, kl_bound=0.02)
            ok = top1 >= 0.95 and kl < 0.02
        row["pass"] = bool(ok)  # NaN logits compare False: a failure
        print(json.dumps(row))


def step_bytes(d):
    """Bytes of weights a batch-1 decode step reads: every tensor of the folder's safetensors,
    less the input embedding table unless the LM head is tied to it (a step reads only the
    looked-up rows of it)."""
    import glob
    import struct

    with open(os.path.join(d, "config.json")) as f:
        tied = json.load(f).get("tie_word_embeddings", False)
    total = embed = 0
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            size = t["data_offsets"][1] - t["data_offsets"][0]
            total += size
            if name.endswith("embed_tokens.weight"):
                embed += size
    excluded = 0 if tied else embed
    return total, excluded


def bandwidth(*dirs):
    n = 1 << 30  # 2 GiB of bf16 each way
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    s = (time.perf_counter() - t) / reps
    gbs = 2 * a.numel() * 2 / s / 1e9  # read + write
    print(json.dumps({"copy_bandwidth_gb_s": gbs}))
    for d in dirs:
        try:
            total, excluded = step_bytes(d)
        except Exception as e:
            print(json.dumps({"model": os.path.basename(d.rstrip("/")), "roofline_error": str(e)}))
            continue
        read = total - excluded
        print(json.dumps({"model": os.path.basename(d.rstrip("/")), "weight_bytes": total,
                          "embed_bytes_not_read": excluded, "step_bytes": read,
                          "roofline_ms": read / (gbs * 1e9) * 1e3}))


# New tokens per sequence: camelid's `--output-tokens` in run.sh.
NEW_TOKENS = 256


def eager(d):
    model = load_hf(d, torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    for batch in (1, 32):
        x = torch.randint(100, 1000, (batch, 128), device="cuda")
        # The same lengths as camelid's bench in run.sh (128 prompt, 256 output tokens): both
        # aggregates divide the tokens made by the wall time, prefill included.
        kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(x, **dict(kw, max_new_tokens=8, min_new_tokens=8))  # warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            model.generate(x, **kw)
            torch.cuda.synchronize()
        s = time.perf_counter() - t
        print(json.dumps({"peer": "transformers-eager", "model": os.path.basename(d), "params": params,
                          "attn_implementation": model.config._attn_implementation,
                          "batch": batch, "new_tokens": NEW_TOKENS, "seconds": s,
                          "aggregate_tok_s": batch * NEW_TOKENS / s}), flush=True)
    del model
    torch.cuda.empty_cache()


def steps(log, name, graphs="1"):
    import re
    import statistics

    by = {}
    pat = re.compile(r"decodes=(\d+) prefill=(\d+) ms=([\d.]+) forward_ms=([\d.]+)")
    captured = failed = launches = 0
    failure = None
    for line in open(log, errors="replace"):
        if "captured a decode graph" in line:
            captured += 1
        elif "graph capture failed" in line:
            failed += 1
            failure = failure or line.strip()[-300:]
        m = pat.search(line)
        if m and int(m.group(2)) == 0:
            by.setdefault(int(m.group(1)), []).append((float(m.group(3)), float(m.group(4))))
            # A step's capture is logged before its trace line; after a failure graphs are off.
            if captured and not failed:
                launches += 1
    on = graphs != "0"
    valid = (captured > 0 and failed == 0) if on else captured == 0
    mode = "on" if on else "off"
    for d in sorted(by):
        xs = by[d]
        if len(xs) < 5:
            continue
        print(json.dumps({"model": name, "decode_steps": len(xs), "batch": d,
                          "step_ms_p50": statistics.median(x[0] for x in xs),
                          "forward_ms_p50": statistics.median(x[1] for x in xs),
                          "graphs": mode, "graphs_valid": valid}))
    print(json.dumps({"model": name, "graphs": mode, "captured": captured, "launches_est": launches,
                      "capture_failed": failed, "failure": failure, "graphs_valid": valid}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "health":
        # The device image may have no curl; a server that died is not waited for.
        import urllib.request
        for _ in range(240):
            try:
                with urllib.request.urlopen(args[0], timeout=2) as r:
                    if r.status == 200:
                        sys.exit(0)
            except Exception:
                pass
            if len(args) > 1 and not os.path.exists(f"/proc/{args[1]}"):
                sys.exit(1)
            time.sleep(0.5)
        sys.exit(1)
    {"make": lambda: make(*args), "logits": lambda: logits(*args), "compare": lambda: compare(args[0], args[1:]),
     "bandwidth": lambda: bandwidth(*args), "steps": lambda: steps(*args), "eager": lambda: eager(*args)}[cmd]()
