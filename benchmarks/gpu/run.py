"""GPU floors of issue 18: integrated gradients, lmxray vs Captum LayerIntegratedGradients vs
Inseq, side by side in one run, on random-init Llama shapes in bf16 with forced targets.

Cases (the anchors of ../../shared/bench/README.md, H200):

| case | model | prompt | targets | IG steps | batch |
|---|---|---|---|---|---|
| 1.1b | TinyLlama shape (22 x 2048, 5632 MLP, 32/4 heads) | 512 | 32 | 32 | 32 |
| 6.7b | Llama-2-7B shape (32 x 4096, 11008 MLP, 32 heads) | 1024 | 16 | 16 | 8 |
| 6.7b-2048 | Llama-2-7B shape | 2048 | 16 | 16 | 16 |

Every peer explains the same token ids: a synthetic word-level tokenizer maps ``t<i>`` to id
``i`` (no special tokens), the prompt and target are seeded random ids. Conventions (as
Captum's ``LLMGradientAttribution``): log-prob of each target token, baseline = token id 0 at
prompt positions, earlier target tokens fixed, Gauss-Legendre steps, signed sum over the hidden
dimension; lmxray runs ``integrated_gradients(n_steps, baseline=0, interpolate="prompt",
internal_batch_size=batch)``, Captum ``LayerIntegratedGradients(model, embeddings)`` once per
target step with ``internal_batch_size=batch``; Inseq ``integrated_gradients`` (when installed,
else "not run"). Agreement: the largest difference over the prompt columns, relative to the
largest |score| (bf16 tolerance: 5e-2). Memory: CUDA peak allocated per method. Throughput:
FLOPs ~ 6 x parameters x tokens processed (forward + backward of every interpolation, every
target step) over the time, as a fraction of the bf16 dense peak (``--peak-tflops``, 989 for
an H200). A peer that runs out of memory is reported "OOM"; one that is missing, "not run".

    python benchmarks/gpu/run.py                  # every case on the GPU (bf16)
    python benchmarks/gpu/run.py --case 1.1b
    python benchmarks/gpu/run.py --tiny           # tiny shapes on CPU (float32): the test
    python benchmarks/gpu/run.py --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CASES: dict[str, dict[str, Any]] = {
    "1.1b": {"layers": 22, "d": 2048, "mlp": 5632, "heads": 32, "kv": 4, "prompt": 512, "targets": 32,
             "steps": 32, "batch": 32},
    "6.7b": {"layers": 32, "d": 4096, "mlp": 11008, "heads": 32, "kv": 32, "prompt": 1024, "targets": 16,
             "steps": 16, "batch": 8},
    "6.7b-2048": {"layers": 32, "d": 4096, "mlp": 11008, "heads": 32, "kv": 32, "prompt": 2048, "targets": 16,
                  "steps": 16, "batch": 16},
}
TINY: dict[str, Any] = {"layers": 2, "d": 64, "mlp": 128, "heads": 4, "kv": 2, "prompt": 12, "targets": 3,
                        "steps": 4, "batch": 4}
VOCAB = 32000
BF16_TOL = 5e-2


def tokenizer(vocab: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0")


def build(shape: dict[str, Any], vocab: int, device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=shape["d"], intermediate_size=shape["mlp"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv"], max_position_embeddings=4096, pad_token_id=0)
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.eval().requires_grad_(False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def run_lmxray(m: Any, prompt: str, target: str, shape: dict[str, Any]) -> np.ndarray:
    a = m.attribute(prompt, target=target, method="integrated_gradients", n_steps=shape["steps"], baseline=0,
                    interpolate="prompt", internal_batch_size=shape["batch"], warn_delta=float("inf"))
    return np.asarray(a.scores[:, : shape["prompt"]], dtype=np.float64)


def run_captum(hf: Any, ids: list[int], tgt: list[int], shape: dict[str, Any], device: str) -> np.ndarray:
    from captum.attr import LayerIntegratedGradients

    def forward(x: torch.Tensor, token: int) -> torch.Tensor:
        logits = hf(input_ids=x, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        return torch.log_softmax(logits, -1)[:, token]

    lig = LayerIntegratedGradients(forward, hf.get_input_embeddings())
    P = len(ids)
    rows = []
    for t, token in enumerate(tgt):
        x = torch.tensor([ids + tgt[:t]], device=device)
        base = x.clone()
        base[:, :P] = 0
        attr = lig.attribute(x, baselines=base, additional_forward_args=(token,), n_steps=shape["steps"],
                             method="gausslegendre", internal_batch_size=shape["batch"])
        rows.append(attr.sum(-1)[0, :P].float().cpu().numpy())
    return np.stack(rows).astype(np.float64)


def run_inseq(hf: Any, tok: Any, prompt: str, target: str, shape: dict[str, Any]) -> np.ndarray:
    import inseq

    model = inseq.load_model(hf, "integrated_gradients", tokenizer=tok)
    out = model.attribute(prompt, prompt + target, n_steps=shape["steps"], internal_batch_size=shape["batch"],
                          attributed_fn="logprob", show_progress=False)
    agg = out.sequence_attributions[0].source_attributions
    return np.asarray(agg.float().sum(-1).T[:, : shape["prompt"]].cpu().numpy(), dtype=np.float64)


def timed(fn: Any, device: str) -> tuple[str | float, Any, float | None]:
    """(seconds or "OOM", result, peak GiB)."""
    from lmxray.memory import is_oom

    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as exc:
        if not is_oom(exc):
            raise
        reset_peak(device)
        return "OOM", None, None
    sync(device)
    return time.perf_counter() - t0, res, peak_gib(device)


def flops(shape: dict[str, Any], n_params: int) -> float:
    P, T, S = shape["prompt"], shape["targets"], shape["steps"]
    tokens = sum((P + t) * S for t in range(T))
    return 6.0 * n_params * tokens


def run_case(name: str, shape: dict[str, Any], device: str, dtype: torch.dtype, vocab: int,
             peak_tflops: float | None) -> dict[str, Any]:
    import lmxray

    hf = build(shape, vocab, device, dtype)
    tok = tokenizer(vocab)
    m = lmxray.load(model=hf, tokenizer=tok)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, shape["prompt"]).tolist()
    tgt = rng.integers(1, vocab, shape["targets"]).tolist()
    prompt = " ".join(f"t{i}" for i in ids)
    target = " " + " ".join(f"t{i}" for i in tgt)
    assert m.encode(prompt) == ids and m.encode_target(target) == tgt, "tokenizer does not round-trip"
    n_params = sum(p.numel() for n, p in hf.named_parameters() if "embed" not in n)
    warm = dict(shape, targets=1)
    run_lmxray(m, prompt, " " + target.split()[0], warm)  # warm-up (kernels, allocator)
    peers: dict[str, Any] = {}
    peers["lmxray"] = timed(lambda: run_lmxray(m, prompt, target, shape), device)
    peers["captum"] = (timed(lambda: run_captum(hf, ids, tgt, shape, device), device)
                       if importlib.util.find_spec("captum") else ("not run", None, None))
    peers["inseq"] = (timed(lambda: run_inseq(hf, tok, prompt, target, shape), device)
                      if importlib.util.find_spec("inseq") else ("not run", None, None))
    ref = peers["lmxray"][1]
    row: dict[str, Any] = {"case": name, "shape": shape, "device": device, "dtype": str(dtype).split(".")[-1],
                           "params_non_embedding": n_params}
    for peer, (secs, scores, peak) in peers.items():
        row[peer] = {"seconds": secs, "peak_gib": peak}
        if isinstance(secs, float) and peak_tflops:
            row[peer]["fraction_of_peak"] = flops(shape, n_params) / secs / (peak_tflops * 1e12)
        if peer != "lmxray" and scores is not None and ref is not None:
            scale = max(float(np.abs(scores).max()), 1e-12)
            row[peer]["max_rel_diff"] = float(np.abs(scores - ref).max()) / scale
            row[peer]["agrees"] = row[peer]["max_rel_diff"] <= BF16_TOL
            if isinstance(secs, float) and isinstance(peers["lmxray"][0], float):
                row[peer]["speedup"] = secs / peers["lmxray"][0]
    m = hf = None  # free the weights before the next case
    reset_peak(device)
    return row


def cell(v: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(v) if isinstance(v, float) else "—" if v is None else str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| case | lmxray s | Captum s | Inseq s | Captum/lmxray | Inseq/lmxray | max diff (Captum, Inseq) | "
            "peak GiB (lmxray, Captum, Inseq) | fraction of bf16 peak (lmxray, Captum) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lx, cp, isq = r["lmxray"], r["captum"], r["inseq"]
        lines.append(
            f"| {r['case']} | {cell(lx['seconds'])} | {cell(cp['seconds'])} | {cell(isq['seconds'])} | "
            f"{cell(cp.get('speedup'))} | {cell(isq.get('speedup'))} | "
            f"{cell(cp.get('max_rel_diff'), '{:.1e}')}, {cell(isq.get('max_rel_diff'), '{:.1e}')} | "
            f"{cell(lx['peak_gib'], '{:.1f}')}, {cell(cp['peak_gib'], '{:.1f}')}, {cell(isq['peak_gib'], '{:.1f}')} | "
            f"{cell(lx.get('fraction_of_peak'), '{:.0%}')}, {cell(cp.get('fraction_of_peak'), '{:.0%}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes in float32 on CPU (tests the script)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H200: 989)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.tiny:
        device, dtype, vocab, peak = "cpu", torch.float32, 512, None
        cases = {"tiny": TINY}
    else:
        if not torch.cuda.is_available():
            print("no GPU on this machine: GPU floors not measured (use --tiny to test the script)")
            return []
        device, dtype, vocab, peak = "cuda", torch.bfloat16, VOCAB, args.peak_tflops
        cases = CASES if args.case == "all" else {args.case: CASES[args.case]}
    rows = [run_case(n, s, device, dtype, vocab, peak) for n, s in cases.items()]
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny)"}
    print(f"{env['gpu']}, torch {env['torch']}")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
