"""Test helpers for the self-explanation tests: a minimal local greedy Generator (tests only; the
package's own generator lives in lmxray.selfexplain.generate) and organism loading."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

import lmxray
from lmxray import zoo
from lmxray.selfexplain._types import Generation


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block: on the shared 2-core machine, intra-op threads waiting
    on each other made these tiny models 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalGen:
    """Greedy generation over a left-padded batch with the KV cache (transformers' generate)."""

    def __init__(self, model: lmxray.Model, name: str = "") -> None:
        self.model = model
        self.name = name or model.name
        tok = model.tokenizer
        self._letters = [tok(c, add_special_tokens=False)["input_ids"][-1] for c in "ABCDEFGH"]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
                 stop: Sequence[str] = ()) -> list[Generation]:
        with one_thread(), torch.no_grad():
            return self._generate(prompts, max_new_tokens, stop)

    def _generate(self, prompts: Sequence[str], max_new_tokens: int,
                  stop: Sequence[str]) -> list[Generation]:
        m = self.model
        out: list[Generation] = []
        for i in range(0, len(prompts), 64):
            chunk = list(prompts[i : i + 64])
            ids, mask, _ = m.pad_batch([m.encode(p) for p in chunk])
            gen = m.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=m.pad_token_id,
                                eos_token_id=m.eos_token_id)
            for p, row in zip(chunk, gen[:, ids.shape[1]:].tolist(), strict=True):
                stopped = "length"
                if m.eos_token_id in row:
                    row = row[: row.index(m.eos_token_id)]
                    stopped = "eos"
                row = [t for t in row if t != m.pad_token_id]
                text = m.tokenizer.decode(row, skip_special_tokens=True)
                for s in stop:
                    if s in text:
                        text, stopped = text[: text.index(s)], "stop"
                out.append(Generation(prompt=p, text=text, n_tokens=len(row), stopped=stopped))
        return out

    def option_logprobs(self, prompts: Sequence[str], n_options: int) -> list[list[float]]:
        with one_thread(), torch.no_grad():
            return self._option_logprobs(prompts, n_options)

    def _option_logprobs(self, prompts: Sequence[str], n_options: int) -> list[list[float]]:
        m = self.model
        res: list[list[float]] = []
        for i in range(0, len(prompts), 128):
            ids, mask, pos = m.pad_batch([m.encode(p) for p in prompts[i : i + 128]])
            logits = m.forward(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            lp = torch.log_softmax(logits.float(), -1)[:, self._letters[:n_options]]
            res += lp.tolist()
        return res


_CACHE: dict[str, LocalGen] = {}


def organism(name: str) -> LocalGen:
    if name not in _CACHE:
        _CACHE[name] = LocalGen(lmxray.load(zoo.model_path(name)), name)
    return _CACHE[name]
