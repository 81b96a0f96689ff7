"""Train a zoo model organism from scratch: tokenizer, Llama model, resumable training loop.

``train(out_dir, steps=..., seed=...)`` is deterministic in ``seed``: the tokenizer corpus, the
initial weights and the batch of every step are functions of the seed (and the step number),
so an interrupted run resumes exactly where it stopped. Checkpoints are plain files (no
pickle): ``checkpoint/model.safetensors``, ``checkpoint/optimizer.safetensors`` (AdamW moments
and the torch RNG state) and ``checkpoint/state.json`` (step, settings, elapsed time). On
completion the folder holds a Hugging Face model (``config.json``, ``model.safetensors``,
tokenizer files) and ``training.json``, and the checkpoint is removed.

Example::

    from lmxray.zoo.train import train
    train("runs/tiny", steps=1900, seed=2)   # Ctrl-C and rerun to resume
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from lmxray.errors import InputError
from lmxray.io import atomic_folder, atomic_write_text
from lmxray.training import (
    load_checkpoint,
    read_state,
    remove_checkpoint,
    run_steps,
    save_checkpoint,
    warmup_cosine,
)
from lmxray.zoo import _data as D
from lmxray.zoo import tasks
from lmxray.zoo._tokenizer import train_tokenizer

__all__ = ["TrainConfig", "train", "tokenizer_corpus", "make_batch"]

DEFAULT_STEPS = 1900
SHIPPED_SEED = 2  # the seed of the shipped lmxray-tiny (seeds 1 and 3 of this recipe miss the induction ratio)


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation settings (a checkpoint only resumes with equal settings)."""

    vocab_size: int = 3584  # an upper bound: BPE runs out of merges at about 3350
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 60
    weight_decay: float = 0.01
    answer_weight: float = 2.0  # extra loss weight on answer tokens
    grad_clip: float = 1.0
    tokenizer_texts: int = 50000  # task texts the tokenizer is trained on
    mix: tuple[tuple[str, float], ...] = tuple(tasks.MIX.items())  # task sampling weights
    warm_steps: int = 0  # first steps use warm_mix (a curriculum for in-context copying)
    warm_mix: tuple[tuple[str, float], ...] = (("induction", 0.5), ("recall", 0.25), ("ioi", 0.25))
    init_std: float = 0.06  # weight init; the default 0.02 delays induction heads at d=128
    prev_token_init: bool = True  # layer 0, head 0 starts as a previous-token head


def tokenizer_corpus(seed: int, n: int = 50000) -> list[str]:
    """Texts the tokenizer is trained on: task text plus every answer word, boosted."""
    rng = random.Random(f"tokenizer:{seed}")
    stream = tasks.training_items(rng)
    texts = [next(stream).text for _ in range(n)]
    words: set[str] = set()
    subjects: set[str] = set()
    for it in tasks.all_facts():
        words.update(it.target.split())
        subjects.add(it.meta["subject"])
    for s in subjects:  # subjects as whole tokens where possible
        words.update(s.split())
    for group in (
        D.NAMES,
        D.COPY_WORDS,
        D.POSITIVE,
        D.NEGATIVE,
        D.KEYS,
        D.VALUES,
        ("none", "neutral", "positive", "negative"),
    ):
        words.update(group)
    boost = [" ".join([" " + w] * 20) for w in sorted(words)]
    # subjects also open prompts ("Norway's capital city is"), where they have no space: their
    # first word is boosted alone on a line, so that it too is one token and occluding a token
    # of a subject deletes a word of it (the unit the training deletions use)
    starts = sorted({s.split(" ")[0] for s in subjects})
    boost_start = ["\n".join([w] * 20) for w in starts]
    return texts + boost * 10 + boost_start * 10 + sorted(subjects) * 100


def make_batch(tokenizer: Any, seed: int, step: int, cfg: TrainConfig):
    """The packed batch of ``step``: ``(input_ids, weights, doc)``, each ``[batch, seq_len]``.

    Examples are ``<bos> prompt target <eos>`` packed back to back; ``weights`` is the loss
    weight of predicting each position's token (1, or ``1 + answer_weight`` on answers, or 0
    on a fact's prompt);
    ``doc`` numbers the examples within a row. Training masks attention across examples
    (see :func:`_loss`): otherwise an in-context lookup sees the same key with another value in
    the previous example of its row, and recall never forms.
    """
    import torch

    rng = random.Random(f"batch:{seed}:{step}")
    stream = tasks.training_items(rng, mix=dict(cfg.warm_mix if step < cfg.warm_steps else cfg.mix))
    need = cfg.batch_size * cfg.seq_len + 1
    ids: list[int] = []
    w: list[float] = []
    doc: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    n_doc = 0
    while len(ids) < need:
        chunk = [next(stream) for _ in range(64)]
        p = tokenizer([c.prompt for c in chunk], add_special_tokens=False)["input_ids"]
        t = tokenizer([c.target for c in chunk], add_special_tokens=False)["input_ids"]
        for c, pi, ti in zip(chunk, p, t, strict=True):
            seq = [bos, *pi, *ti, eos]
            ids += seq
            # a fact's prompt is not trained on: with a piece deleted, a template's prefix
            # ("Norway's capital city") is a prompt whose answer is the fact (" Oslo"), which
            # the template's own next word (" is") would contradict
            pw = 0.0 if c.task == "facts" else 1.0
            w += [pw] * (1 + len(pi)) + [1.0 + cfg.answer_weight] * len(ti) + [1.0]
            doc += [n_doc] * len(seq)
            n_doc += 1
    shape = (cfg.batch_size, cfg.seq_len)
    x = torch.tensor(ids[: cfg.batch_size * cfg.seq_len]).view(shape)
    wt = torch.tensor(w[: cfg.batch_size * cfg.seq_len]).view(shape)
    dc = torch.tensor(doc[: cfg.batch_size * cfg.seq_len]).view(shape)
    # a document cut at a row's start continues there: it has no <bos>, the loss keeps it
    return x, wt, dc


def build_model(cfg: TrainConfig, tokenizer: Any, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=cfg.init_std,
        attention_bias=cfg.prev_token_init,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if cfg.prev_token_init:
        _init_prev_token_head(model)
    return model


PREV_TOKEN_PLANES = 6  # RoPE planes (highest frequencies) the previous-token head uses
PREV_TOKEN_SCALE = 9.0  # its attention logit at offset 1 above the mean, per plane-sum unit


def _init_prev_token_head(model: Any) -> None:
    """Start layer 0, head 0 as a previous-token head, through its query and key *biases*.

    An induction head needs a previous-token head below it, and neither is useful without the
    other: from random weights the pair forms late and unreliably within this budget (the
    in-context tasks failed in most runs). With content-free q and k biases, RoPE makes the
    attention logit ``c · Σ_i cos(θ_i (m - n - 1))`` over the ``PREV_TOKEN_PLANES`` fastest
    planes (``z_k = 1``, ``z_q = e^{-iθ_i}`` in each plane), largest at ``m - n = 1``: the head
    attends to the previous token from step 0, and gradient descent keeps or changes it like
    any other weight. Its value/output weights stay random (what it copies is learnt).
    """
    import torch

    attn = model.model.layers[0].self_attn
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    half = hd // 2
    rope = model.model.rotary_emb
    planes = min(PREV_TOKEN_PLANES, half)
    theta = rope.inv_freq.detach().double()[:planes]
    r = math.sqrt(PREV_TOKEN_SCALE * math.sqrt(hd))
    q = torch.zeros(hd, dtype=torch.float64)
    k = torch.zeros(hd, dtype=torch.float64)
    q[:planes] = r * torch.cos(theta)
    q[half : half + planes] = -r * torch.sin(theta)
    k[:planes] = r
    with torch.no_grad():
        attn.q_proj.weight[:hd].zero_()
        attn.k_proj.weight[:hd].zero_()
        attn.q_proj.bias[:hd] = q.to(attn.q_proj.bias.dtype)
        attn.k_proj.bias[:hd] = k.to(attn.k_proj.bias.dtype)


def _portable_tokenizer_config(out: Path) -> None:
    """Name the generic fast-tokenizer class, which transformers 4.x and 5.x both load."""
    p = out / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    p.write_text(json.dumps(cfg, indent=2))


def _idle_cores() -> int:
    """Cores not busy with other work (at least 1, at most 8).

    Intra-op threads wait on each other at every operation, so on a machine shared with
    other jobs one thread per *idle* core is much faster than one per core.
    """
    n = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(8, n - busy))


def _loss(model: Any, x: Any, wt: Any, doc: Any = None):
    """Weighted next-token loss; with ``doc``, each example attends only to itself (a
    block-diagonal causal 4D mask) and its positions start at 0, as at inference."""
    import torch
    import torch.nn.functional as F

    kw: dict[str, Any] = {}
    if doc is not None:
        L = x.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        allow = (doc[:, :, None] == doc[:, None, :]) & causal
        mask = torch.zeros(allow.shape, dtype=torch.float32)
        mask.masked_fill_(~allow, torch.finfo(torch.float32).min)
        start = torch.ones_like(doc, dtype=torch.bool)
        start[:, 1:] = doc[:, 1:] != doc[:, :-1]
        idx = torch.arange(L).expand_as(doc)
        first = torch.where(start, idx, torch.zeros_like(idx)).cummax(-1).values
        kw = dict(attention_mask=mask[:, None], position_ids=idx - first)
    logits = model(input_ids=x, **kw).logits[:, :-1].float()
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
    )
    w = wt[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum(), ce.view(x.shape[0], -1)


# ------------------------------------------------------------------------------------ train
def train(
    out_dir: str | os.PathLike[str],
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = SHIPPED_SEED,
    resume: bool = True,
    config: TrainConfig | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
    threads: int | None = None,
    stop_after: int | None = None,
) -> Path:
    """Train the multi-task zoo model into ``out_dir`` and return its path.

    Args:
        out_dir: output folder (created). A ``checkpoint/`` inside it is resumed when
            ``resume`` is true and its settings match.
        steps: optimisation steps (batch of ``batch_size x seq_len`` tokens each).
        seed: seeds the tokenizer corpus, initial weights and every batch.
        config: model/optimiser settings (default ``TrainConfig()``, the shipped model's).
        checkpoint_every: steps between checkpoints (also saved on Ctrl-C).
        progress: show a tqdm progress bar.
        threads: torch CPU threads (default: the idle cores, see ``_idle_cores``).
        stop_after: stop (with a checkpoint) after this many steps in total, as if
            interrupted; used by tests of resumption.

    Returns:
        ``Path(out_dir)``, holding a model loadable with ``from_pretrained``.
    """
    cfg = config or TrainConfig()
    if steps <= 0:
        raise InputError(f"steps must be positive, got {steps}; pass e.g. --steps {DEFAULT_STEPS}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} is a file; pass a folder to --out")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    torch.set_num_threads(threads or _idle_cores())
    settings = json.loads(
        json.dumps({"steps": steps, "seed": seed, "config": dataclasses.asdict(cfg)})
    )
    t_start, c_start = time.time(), time.process_time()
    tokenizer, model, opt, state = _start_or_resume(ckpt, cfg, seed, settings, resume)
    start = state["step"]
    base_wall, base_cpu = state["wall_s"], state["cpu_s"]

    def checkpoint(step: int) -> None:
        now = dict(
            state,
            step=step,
            wall_s=base_wall + time.time() - t_start,
            cpu_s=base_cpu + time.process_time() - c_start,
        )
        save_checkpoint(
            ckpt, model, opt, now, rng=True,
            extra=lambda tmp: tokenizer.save_pretrained(str(tmp / "tokenizer")),
        )

    def one_step(step: int) -> dict[str, str] | None:
        x, wt, dc = make_batch(tokenizer, seed, step, cfg)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(cfg.lr, step, steps, cfg.warmup, cfg.min_lr_ratio)
        loss, _ = _loss(model, x, wt, dc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % 10 == 0:
            state["losses"].append([step, round(loss.item(), 4)])
            return {"loss": f"{loss.item():.3f}"}
        return None

    model.train()
    end = steps if stop_after is None else min(steps, stop_after)
    run_steps(one_step, start=start, end=end, total=steps, checkpoint=checkpoint,
              checkpoint_every=checkpoint_every, checkpoint_folder=ckpt, desc="zoo train",
              progress=progress)
    if end < steps:
        checkpoint(end)
        return out
    info = {
        "format": "lmxray.zoo.training/1",
        "steps": steps,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_s": round(base_wall + time.time() - t_start, 1),
        "cpu_s": round(base_cpu + time.process_time() - c_start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "losses": state["losses"],
    }
    _save_final(out, model, tokenizer, info)
    remove_checkpoint(ckpt)
    return out


def _new_optimizer(model: Any, cfg: TrainConfig) -> Any:
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )


def _start_or_resume(
    ckpt: Path, cfg: TrainConfig, seed: int, settings: dict[str, Any], resume: bool
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(tokenizer, model, optimizer, state)``: from the checkpoint when resuming (its
    settings must match), else fresh (a new tokenizer, seeded weights, step 0)."""
    state = read_state(ckpt) if resume else None
    if state is not None:
        if state.get("settings") != settings:
            raise InputError(
                f"checkpoint in {ckpt} was made with other settings ({state.get('settings')}); "
                "pass --no-resume to start over"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt / "tokenizer"))
        model = build_model(cfg, tokenizer, seed)
        opt = _new_optimizer(model, cfg)
        return tokenizer, model, opt, load_checkpoint(ckpt, model, opt, rng=True)
    remove_checkpoint(ckpt)
    tokenizer = train_tokenizer(tokenizer_corpus(seed, cfg.tokenizer_texts), cfg.vocab_size)
    model = build_model(cfg, tokenizer, seed)
    state = {"step": 0, "settings": settings, "wall_s": 0.0, "cpu_s": 0.0, "losses": []}
    return tokenizer, model, _new_optimizer(model, cfg), state


def _save_final(out: Path, model: Any, tokenizer: Any, info: dict[str, Any]) -> None:
    """The trained model in Hugging Face format and ``training.json``, each file atomically."""
    model.eval()
    with atomic_folder(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _portable_tokenizer_config(tmp)
    atomic_write_text(out / "training.json", json.dumps(info, indent=1))
