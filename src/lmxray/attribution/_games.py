"""Coalition games over token features: what Shapley sampling, KernelSHAP and LIME evaluate.

A *player* is a group of source positions: one token (``features="token"``), a word, a sentence,
or spans the user gives (e.g. the system / user / document segments of a chat prompt). The value
of a coalition ``S`` at target step ``t`` is the target function of step ``t`` (teacher forced)
when only the players in ``S`` are present:

- ``replace="remove"`` (default): absent tokens are deleted; a step whose whole prefix is deleted
  is scored after a single context token (BOS, else EOS) so that ``v(empty)`` is defined.
- ``replace="baseline"``: absent tokens are replaced by a baseline token; positions are kept.

``sources="all"`` (default) makes every token a step reads a player, earlier target tokens
included (as occlusion does); ``sources="prompt"`` keeps the target tokens fixed (Captum's
``LLMAttribution`` convention). Step ``t`` reads positions ``< n_prompt + t``, so players after
that are null players for it: they get exactly zero, and estimators are solved on the players each
step can see.

Every coalition scores all its target steps from one teacher-forced forward pass; steps whose
prefix is untouched reuse the unperturbed values; all coalitions of all prompts go to the engine
together (batched, duplicates once, shared prefixes from the KV cache).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, MethodError
from ..model import Model
from ._engine import ScoreRow, score_sequences
from ._prefix import count_forward_tokens
from .base import Context, Request, nan_mask_scores
from .gradient import resolve_baseline_ids

__all__ = [
    "Game", "build_games", "evaluate", "spread", "FEATURES", "segment_spans", "segment_owners",
    "int_param",
    "check_replace",
]

FEATURES = ("token", "word", "sentence")
_SENT_END = re.compile(r"[.!?][\"')\]]*\s*$")
_PUNCT = re.compile(r"^\W+$")


@dataclass
class Game:
    """The coalition game of one request.

    Attributes:
        req: the request (prompt, target, foil ids).
        groups: positions (into ``req.input_ids``) of each player, sorted.
        player_of: ``[L]`` player index of each input position, ``-1`` for fixed positions.
        relevant: ``[T, G]`` whether step ``t`` reads a position of player ``g``.
    """

    req: Request
    groups: list[np.ndarray]
    player_of: np.ndarray
    relevant: np.ndarray
    replace: str
    baseline_id: int | None
    context_id: int | None
    feature_desc: str

    @property
    def n_players(self) -> int:
        return len(self.groups)

    def rng(self, seed: int) -> np.random.Generator:
        """A generator seeded by ``seed`` and the request's tokens (batched == unbatched)."""
        return np.random.default_rng([int(seed), *self.req.source_ids, *self.req.target_ids])

    def spans(self) -> list[list[int]]:
        """``[start, end)`` of each player when contiguous, else its positions."""
        out = []
        for g in self.groups:
            if len(g) and g[-1] - g[0] + 1 == len(g):
                out.append([int(g[0]), int(g[-1]) + 1])
            else:
                out.append([int(x) for x in g])
        return out


def int_param(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ features
def _raw_tokens(model: Any, ids: Sequence[int]) -> list[str]:
    return list(model.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def _boundaries(model: Any, ids: Sequence[int], kind: str) -> list[bool]:
    """``starts[i]``: token ``i`` starts a new word (or sentence)."""
    specials = set(model.tokenizer.all_special_ids or [])
    raw = _raw_tokens(model, ids)
    text = model.token_strings(ids)
    starts = []
    for i, tid in enumerate(ids):
        if i == 0 or tid in specials or ids[i - 1] in specials:
            starts.append(True)
            continue
        if kind == "word":
            r = raw[i] or ""
            s = text[i]
            starts.append(
                r[:1] in ("Ġ", "▁", "Ċ", "ĉ") or s[:1].isspace() or bool(_PUNCT.match(s))
                or bool(_PUNCT.match(text[i - 1]))
            )
        else:  # sentence: after . ! ? (and closing quotes) or a newline
            prev = text[i - 1]
            starts.append(bool(_SENT_END.search(prev)) or "\n" in prev)
    return starts


def _runs(starts: Sequence[bool], offset: int) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, st in enumerate(starts):
        if st or not groups:
            groups.append([])
        groups[-1].append(offset + i)
    return groups


def _feature_groups(
    model: Any, req: Request, spec: Any, players: int, sources: str
) -> tuple[list[list[int]], str]:
    """Player groups over positions ``0..players-1`` (prompt and target never share a group)."""
    ids = req.input_ids
    if isinstance(spec, str):
        if spec not in FEATURES:
            raise InputError(
                f"unknown features {spec!r}; use 'token', 'word', 'sentence' or a list of "
                "(start, end) token spans"
            )
        if spec == "token":
            return [[p] for p in range(players)], "token"
        groups = []
        for lo, hi in ((0, min(req.n_prompt, players)), (req.n_prompt, players)):
            if hi > lo:
                groups += _runs(_boundaries(model, ids[lo:hi], spec), lo)
        return groups, spec
    spans = _as_spans(spec)
    n_src = req.n_source
    taken = np.full(players, -1)
    groups = []
    for a, b in spans:
        if not 0 <= a < b <= n_src:
            raise InputError(
                f"feature span ({a}, {b}) is outside the {n_src} source tokens; give half-open "
                "(start, end) token indices into source_tokens"
            )
        if sources == "prompt" and b > req.n_prompt:
            raise InputError(
                f"feature span ({a}, {b}) covers target tokens, but sources='prompt' makes only "
                f"the {req.n_prompt} prompt tokens players; end spans at {req.n_prompt}"
            )
        pos = [p for p in range(a, min(b, players))]
        if not pos:
            continue
        if (taken[pos] >= 0).any():
            raise InputError(f"feature spans overlap at ({a}, {b}); give disjoint spans")
        taken[pos] = len(groups)
        groups.append(pos)
    for p in range(players):  # positions no span covers are players of their own
        if taken[p] < 0:
            groups.append([p])
    groups.sort(key=lambda g: g[0])
    return groups, "spans"


def _as_spans(spec: Any) -> list[tuple[int, int]]:
    try:
        spans = [(int(a), int(b)) for a, b in spec]
        ok = all(
            not isinstance(x, bool) and isinstance(x, int | np.integer) for s in spec for x in s
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(
            "features must be 'token', 'word', 'sentence' or a list of (start, end) token spans"
        )
    return spans


def _per_request(spec: Any, n: int) -> list[Any]:
    """One feature spec per request: a string, one span list for all, or one entry per request."""
    if isinstance(spec, str):
        return [spec] * n
    if isinstance(spec, list | tuple) and spec and all(
        isinstance(s, str) or (isinstance(s, list | tuple) and s and isinstance(s[0], list | tuple))
        for s in spec
    ):
        if len(spec) != n:
            raise InputError(f"got {len(spec)} feature specs for {n} prompts; give one per prompt")
        return list(spec)
    return [spec] * n


def segment_owners(model: Any, segments: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids of the concatenated ``segments`` (tokenised whole, as :meth:`Model.encode`
    does) and the segment each token belongs to (the one holding its first non-space
    character; ``-1`` for special tokens such as BOS)."""
    text = "".join(segments)
    try:
        enc = model.tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        raise InputError("segment_spans needs a fast tokenizer (offset mapping)") from None
    offsets = enc["offset_mapping"]
    specials = set(model.tokenizer.all_special_ids or [])
    bounds = np.cumsum([0, *[len(s) for s in segments]])
    owner = []
    for tid, (a, b) in zip(enc["input_ids"], offsets, strict=True):
        if tid in specials or b <= a:
            owner.append(-1)
            continue
        start = a
        while start < b - 1 and text[start].isspace():
            start += 1
        owner.append(int(np.searchsorted(bounds, start, side="right") - 1))
    return list(enc["input_ids"]), owner


def segment_spans(model: Any, segments: Sequence[str]) -> list[tuple[int, int]]:
    """Token spans of text segments whose concatenation is the prompt (for ``features=``).

    The prompt is tokenised whole (as :meth:`Model.encode` does); each token goes to the segment
    that holds its first character. Special tokens (BOS) stay players of their own.

    Example:
        >>> spans = segment_spans(m, [system, "\\n\\nUser: ", question])  # doctest: +SKIP
        >>> m.attribute("".join([system, "\\n\\nUser: ", question]), target=t,
        ...             method="kernel_shap", features=spans)  # doctest: +SKIP
    """
    _, owner = segment_owners(model, segments)
    spans = []
    for seg in range(len(segments)):
        pos = [i for i, o in enumerate(owner) if o == seg]
        if pos:
            spans.append((pos[0], pos[-1] + 1))
    return spans


# ------------------------------------------------------------------------------ games
def check_replace(model: Any, replace: str, baseline: Any) -> tuple[int | None, str]:
    """The baseline token of ``replace="baseline"`` (``None`` for ``"remove"``) and its description."""
    if replace == "remove":
        return None, "remove"
    if replace == "baseline":
        if isinstance(baseline, str) and baseline == "auto" and not isinstance(model, Model):
            # a black-box model has no embeddings to inspect: first of unk, pad, eos
            tok = model.tokenizer
            ids = [i for i in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id) if i is not None]
            if not ids:
                raise InputError("the tokenizer has no unk/pad/eos token; pass baseline=<token id>")
            baseline = int(ids[0])
        bid, desc = resolve_baseline_ids(model, baseline)
        if bid is None:
            raise InputError("occlusion with replace='baseline' needs a token baseline, not 'zero'")
        return bid, desc
    raise InputError(f"replace must be 'remove' or 'baseline', got {replace!r}")


def build_games(
    model: Any,
    requests: list[Request],
    features: Any,
    replace: str,
    baseline: Any,
    sources: str,
) -> list[Game]:
    baseline_id, _ = check_replace(model, replace, baseline)
    if sources not in ("all", "prompt"):
        raise InputError(f"sources must be 'all' or 'prompt', got {sources!r}")
    context_id = None
    if replace == "remove":
        tok = model.tokenizer
        context_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if context_id is None:
            raise MethodError(
                "replace='remove' scores an empty prefix after a BOS/EOS token, and this "
                "tokenizer has neither; pass replace='baseline'"
            )
    specs = _per_request(features, len(requests))
    games = []
    for req, spec in zip(requests, specs, strict=True):
        n_in = len(req.input_ids)
        players = n_in if sources == "all" else req.n_prompt
        groups, desc = _feature_groups(model, req, spec, players, sources)
        player_of = np.full(n_in, -1, dtype=np.int64)
        arrs = [np.asarray(g, dtype=np.int64) for g in groups]
        for gi, g in enumerate(arrs):
            player_of[g] = gi
        first = np.array([g[0] for g in arrs], dtype=np.int64)
        reads = req.n_prompt + np.arange(req.n_target)
        relevant = first[None, :] < reads[:, None]
        games.append(
            Game(req, arrs, player_of, relevant, replace, baseline_id, context_id, desc)
        )
    return games


def _coalition_rows(game: Game, z: np.ndarray) -> list[tuple[ScoreRow, int]]:
    """Rows that score coalition ``z`` and the first step each covers (untouched steps: none)."""
    req = game.req
    ids = np.asarray(req.input_ids)
    present = np.ones(len(ids), dtype=bool)
    players = game.player_of >= 0
    present[players] = z[game.player_of[players]]
    absent = np.flatnonzero(~present)
    if not len(absent):
        return []
    t0 = max(0, int(absent[0]) - req.n_prompt + 1)  # earlier steps read nothing that changed
    if t0 >= req.n_target:
        return []
    tg, fo = req.target_ids, req.foil_ids
    if game.replace == "baseline":
        row = ids.copy()
        row[absent] = game.baseline_id
        return [(ScoreRow(row.tolist(), tg[t0:], fo[t0:] if fo else None), t0)]
    kept = np.flatnonzero(present)
    c = np.searchsorted(kept, req.n_prompt + np.arange(req.n_target))  # kept tokens before step t
    out = []
    t = t0
    while t < req.n_target:
        if c[t] == 0:
            # only replace="remove" deletes tokens, and it always has a context token (build_games)
            assert game.context_id is not None
            row = ScoreRow([game.context_id], [tg[t]], [fo[t]] if fo else None)
            out.append((row, t))
            t += 1
            continue
        b = t
        while b + 1 < req.n_target and c[b + 1] == c[b] + 1:
            b += 1
        row_ids = ids[kept[: c[b]]].tolist()
        out.append((ScoreRow(row_ids, tg[t:b + 1], fo[t:b + 1] if fo else None), t))
        t = b + 1
    return out


def evaluate(
    model: Any, games: Sequence[Game], coalitions: Sequence[np.ndarray], ctx: Context
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, int]]:
    """Values of coalitions ``[K_i, G_i]`` (bool) for each game.

    Returns:
        ``values``: per game ``[K_i, T_i]`` float64; ``full``: per game ``[T_i]`` (all present);
        and the forward-token counts of the whole evaluation.
    """
    rows: list[ScoreRow] = []
    refs: list[tuple[int, int, int, int]] = []  # (game, unique coalition, first step, n steps)
    inverses = []
    for gi, (game, z) in enumerate(zip(games, coalitions, strict=True)):
        req = game.req
        rows.append(ScoreRow(req.input_ids, req.target_ids, req.foil_ids))
        refs.append((gi, -1, 0, req.n_target))
        uz, inv = np.unique(np.asarray(z, dtype=bool), axis=0, return_inverse=True)
        inverses.append((uz, inv.reshape(-1)))
        for k, zk in enumerate(uz):
            for row, t in _coalition_rows(game, zk):
                rows.append(row)
                refs.append((gi, k, t, len(row.targets)))
    with count_forward_tokens() as stats:
        vals = score_sequences(model, rows, ctx)
    full = [np.zeros(g.req.n_target) for g in games]
    for (gi, k, _, _), v in zip(refs, vals, strict=True):
        if k < 0:
            full[gi] = v.astype(np.float64)
    out = []
    uvals = [np.repeat(full[gi][None, :], len(u), axis=0) for gi, (u, _) in enumerate(inverses)]
    for (gi, k, t, n), v in zip(refs, vals, strict=True):
        if k >= 0:
            uvals[gi][k, t:t + n] = v
    for gi, (_, inv) in enumerate(inverses):
        out.append(uvals[gi][inv])
    return out, full, stats.as_dict()


def spread(game: Game, phi: np.ndarray) -> tuple[np.ndarray, int]:
    """Token scores ``[T, S]`` from player values ``[T, G]``: each player's value is shared
    equally by the positions of it that the step reads (so a step's scores still sum to its
    players' sum). Fixed positions and unread ones are NaN; returns the count of NaN cells a
    step could read (``info["undefined_cells"]``)."""
    req = game.req
    scores = np.full((req.n_target, req.n_source), np.nan, dtype=np.float64)
    for t in range(req.n_target):
        limit = req.n_prompt + t
        for g, pos in enumerate(game.groups):
            seen = pos[pos < limit]
            if len(seen):
                scores[t, seen] = phi[t, g] / len(seen)
    out = nan_mask_scores(scores, req.n_prompt)
    defined = np.arange(req.n_source)[None, :] < (req.n_prompt + np.arange(req.n_target))[:, None]
    return out, int((np.isnan(out) & defined).sum())


def game_info(game: Game, stats: dict[str, int], empty: np.ndarray | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "replace": game.replace,
        "features": game.feature_desc,
        "n_players": game.n_players,
        "forward_tokens": stats,
    }
    if game.feature_desc != "token":
        info["groups"] = game.spans()
    if game.replace == "baseline":
        info["baseline_id"] = game.baseline_id
    if empty is not None:
        info["empty_value"] = [float(x) for x in empty]
    return info
