"""Streaming text and activations for SAE training: never the whole corpus in memory.

A *corpus* is ``None``/``"zoo"`` (an endless stream of zoo training text, the tasks' mixture),
a ``.txt`` file (one text per non-empty line), a ``.jsonl`` file (``text``, or ``prompt`` +
``target``, per row), a folder of such files (read in name order), or any iterable of strings.
Files are read line by line and restarted at the end (epochs), so a run of any length streams.

:class:`ActivationStream` turns texts into batches of ``[batch_tokens, d]`` activations at a site,
running the model on a few texts at a time (position 0, the BOS token, and padding dropped). Its
position is the number of texts consumed, so a resumed run skips them without running the model.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..errors import InputError
from ..hooks import capture, run_with_cache
from ..sites import site_map
from ..zoo.tasks import training_items

__all__ = ["text_stream", "check_corpus", "ActivationStream", "token_activations", "site_width",
           "read_texts", "site_forward"]

_EXTS = (".txt", ".jsonl")


def check_corpus(corpus: Any) -> Any:
    """Validate a corpus argument before any work (one-line :class:`InputError`)."""
    if corpus is None or corpus == "zoo":
        return None
    if isinstance(corpus, str | os.PathLike):
        path = Path(corpus)
        if not path.exists():
            raise InputError(f"corpus {path} does not exist; give a .txt or .jsonl file, a folder "
                             "of them, or 'zoo'")
        files = _files(path)
        if not files:
            raise InputError(f"corpus {path} holds no .txt or .jsonl file")
        first = next(_read_file(files[0]), None)
        if first is None:
            raise InputError(f"corpus file {files[0]} holds no text")
        return path
    if isinstance(corpus, Iterable):
        return corpus
    raise InputError(f"cannot read a corpus from {type(corpus).__name__}; give a path, texts or 'zoo'")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in _EXTS and p.is_file())
    if path.suffix not in _EXTS:
        raise InputError(f"corpus {path} must be a .txt or .jsonl file (or a folder of them)")
    return [path]


def _row_text(row: dict[str, Any], path: Path, line: int) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("prompt"), str):
        return row["prompt"] + str(row.get("target") or "")
    raise InputError(f"{path} line {line}: a corpus row needs a 'text' (or 'prompt') string")


def _read_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        for i, row in io.iter_jsonl(path, what="corpus"):
            yield _row_text(row, path, i)
        return
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")
    except UnicodeDecodeError:
        raise InputError(f"corpus {path} is not UTF-8 text") from None


def read_texts(path: str | os.PathLike[str], limit: int = 10_000) -> list[str]:
    """The texts of a file or folder, read once (at most ``limit``)."""
    files = _files(Path(check_corpus(path)))
    return list(itertools.islice(itertools.chain.from_iterable(_read_file(f) for f in files), limit))


def text_stream(corpus: Any = None, seed: int = 0) -> Iterator[str]:
    """An endless stream of texts from ``corpus`` (see the module docstring)."""
    corpus = check_corpus(corpus)
    if corpus is None:
        items = training_items(random.Random(f"concepts:{seed}"), "train")
        return (item.text for item in items)
    if isinstance(corpus, Path):
        files = _files(corpus)
        return itertools.chain.from_iterable(
            _read_file(f) for _ in itertools.count() for f in files)
    texts = corpus
    return itertools.cycle(texts) if isinstance(texts, list | tuple) else iter(texts)


class _Stop(Exception):
    """Raised by a hook to end a forward once the site is read."""


def site_forward(model: Any, site: str, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activations [B, L, d], attention_mask [B, L])`` at ``site`` for left-padded ``seqs``;
    the forward stops right after the site (the later layers and the unembedding never run)."""
    s = site_map(model)[site]
    ids, mask, pos = model.pad_batch(seqs)

    def stop(*_: Any) -> None:
        raise _Stop

    with capture(model, [s.name]) as store, torch.no_grad():
        # registered after capture's hook, so it runs after the site is recorded
        hook = (s.module.register_forward_pre_hook(lambda m, a: stop()) if s.mode == "input"
                else s.module.register_forward_hook(lambda m, a, o: stop()))
        try:
            model.forward(input_ids=ids, attention_mask=mask, position_ids=pos)
        except _Stop:
            pass
        finally:
            hook.remove()
        acts = store[s.name]
    return acts, mask


def token_activations(model: Any, site: str, texts: list[str], max_len: int = 128,
                      drop_first: bool = True, rows: int = 32) -> torch.Tensor:
    """Activations ``[N, d]`` of every real token of ``texts`` at ``site`` (the first token of
    each text dropped when ``drop_first``: BOS), texts grouped by length ``rows`` at a time."""
    seqs = [model.encode(t)[:max_len] for t in texts]
    seqs = sorted((s for s in seqs if len(s) > int(drop_first)), key=len)
    parts = []
    for i in range(0, len(seqs), rows):
        acts, mask = site_forward(model, site, seqs[i:i + rows])
        mask = mask.bool()
        if drop_first:
            mask = mask.clone()
            mask[torch.arange(len(mask)), mask.int().argmax(-1)] = False
        parts.append(acts[mask].float())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def site_width(model: Any, site: str) -> int:
    """The last dimension of ``site``'s activations (one two-token forward)."""
    name = site_map(model)[site].name
    cache = run_with_cache(model, [model.encode("a b")], cache=[name], logits=False)
    return int(cache.activations[name].shape[-1])


class ActivationStream:
    """Batches of activations at ``site`` from an endless text stream (see module docstring).

    Attributes:
        consumed: texts read so far (the resume position).
        tokens: activation rows produced so far.
    """

    def __init__(self, model: Any, site: str, corpus: Any = None, *, batch_tokens: int = 2048,
                 texts_per_forward: int = 64, max_len: int = 128, seed: int = 0,
                 skip: int = 0) -> None:
        self.model, self.site = model, site
        # small batches read few texts per forward (the rest of a forward is dropped)
        self.chunk = min(texts_per_forward, max(4, batch_tokens // 16))
        self.batch_tokens, self.max_len = batch_tokens, max_len
        self.texts = text_stream(corpus, seed)
        self.consumed = 0
        for _ in range(skip):
            next(self.texts)
        self.consumed = skip
        self.tokens = 0

    def next_batch(self) -> torch.Tensor:
        """The next ``[batch_tokens, d]`` batch (tokens beyond it in the last forward are
        dropped, so the stream's position is a whole number of texts)."""
        parts: list[torch.Tensor] = []
        have = 0
        with torch.no_grad():
            while have < self.batch_tokens:
                texts = list(itertools.islice(self.texts, self.chunk))
                if not texts:
                    raise InputError("the corpus ran out of text")
                self.consumed += len(texts)
                acts = token_activations(self.model, self.site, texts, self.max_len)
                if len(acts):
                    parts.append(acts)
                    have += len(acts)
        batch = torch.cat(parts)[: self.batch_tokens]
        self.tokens += len(batch)
        return batch

    def as_fn(self) -> Callable[[int], torch.Tensor]:
        return lambda step: self.next_batch()
