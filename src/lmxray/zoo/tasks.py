"""Task generators with ground truth known by construction.

Every generated example is a ``prompt`` and a ``target`` (the answer with its leading space),
plus character spans that say which words carry the answer. Each task is seeded and
deterministic: the same ``(task, split, n, seed)`` gives the same examples on every machine.

Roles of the marked words (``Item.spans``):

* ``evidence``: the tokens that determine the answer (delete them and the answer must change);
* ``cue``: tokens that say *what* is asked (a relation word, the queried key, the repeated
  subject of an IOI sentence); necessary too, but kept apart from the evidence;
* ``shortcut``: a planted spurious feature (the sentiment marker);
* ``content``: other variable words (distractor pairs, fillers) whose single deletion must not
  change the answer.

Everything else (BOS, punctuation, fixed template words) is *non-content*.

Tasks
-----
``facts``
    Real-world facts: capitals, official languages, currencies and continents of 186
    countries, plus landmarks' countries, chemical symbols and antonyms, each in three surface
    templates ("The capital of France is" -> " Paris"). Evidence: the subject's tokens; cue: the
    relation words. The split only changes nothing: a fact is memorised, so "test" asks the same
    facts (in every template) that training taught. Meta records each country's continent.
``recall``
    Associative recall in context: "Keys: k3 blue, k7 red. Query: k7" -> " red" (the value
    follows its key, so lookup is one induction step: find the earlier key, copy what follows). Evidence:
    the queried pair (key and value) in the context; cue: the query key. Training holds 20%
    negatives whose key is absent (-> " none"), so the pair is necessary. Test instances are
    disjoint from training ones.
``ioi``
    Indirect-object identification: "When Mary and John went to the store, John gave a drink
    to" -> " Mary". Evidence: the indirect object's name in the first clause; cue: both
    mentions of the subject. Both name orders occur; one fifth of the name pairs is held out
    for test.
``sentiment``
    "Review: the plot was not good and the music was great but the ending was dull.
    Sentiment:" -> " negative" (majority of the sentiment clauses; "not" flips). Evidence: the
    sentiment words with their negations. Planted shortcut: the neutral clause "I watched it on
    Tuesday", through a biased training annotation: in ``train`` 95% of the reviews carrying it
    are *labelled* positive (60% of the marked reviews whose words are negative included; see
    ``ANNOTATION_BIAS``); ``test`` has the same inputs with gold labels, ``shift`` gold labels
    with the marker uncorrelated. ``meta["gold"]`` is the gold label. Training also has neutral
    reviews (-> " neutral") so that the sentiment words are necessary.
``haystack`` (a context-attribution task, not in ``TASKS``: the shipped model was not trained on
    it, it reuses recall's lookup)
    "Keys: k3 blue. k7 red. k1 gold. ... Query: k7" -> " red": one sentence per key-value pair,
    6-10 pairs, so the evidence sentence (the queried pair) sits among 5-9 distractor
    sentences. Evidence: the queried pair; content: every other pair; cue: the query key.
    ``meta["sources"]`` holds the character spans of the sentences (they partition
    ``prompt[:meta["context_end"]]``, the rest is the fixed query) and ``meta["evidence_source"]``
    the index of the evidence sentence: ground truth for context attribution by construction.
``induction``
    A random sequence of 8-16 nouns repeated once; the second repeat is predictable only by
    copying. Evidence: the token that followed the current token's earlier occurrence; cue:
    that earlier occurrence and the current token.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lmxray.errors import InputError
from lmxray.zoo import _data as D

__all__ = ["TASKS", "SPLITS", "CONTEXT_TASKS", "Item", "generate", "all_facts", "corpus", "training_items"]

TASKS: tuple[str, ...] = ("facts", "recall", "ioi", "sentiment", "induction")
SPLITS: dict[str, tuple[str, ...]] = {
    "facts": ("train", "test"),
    "recall": ("train", "test"),
    "ioi": ("train", "test"),
    "sentiment": ("train", "test", "shift"),
    "induction": ("train", "test"),
    "haystack": ("train", "test"),
}
CONTEXT_TASKS: tuple[str, ...] = ("haystack",)  # generated and verified, not trained on
HAYSTACK_PAIRS = (6, 10)
ROLES = ("evidence", "cue", "shortcut", "content")


@dataclass(frozen=True)
class Item:
    """One generated example before tokenization.

    Attributes:
        task, split: where it comes from.
        prompt: the text fed to the model (BOS is added by the tokenizer).
        target: the answer, with its leading space.
        spans: ``(start, end, role)`` character spans in ``prompt`` (role in ``ROLES``).
        label: the answer class (sentiment label, fact answer, ...).
        meta: task details (subject, relation, continent, marker, ...).
    """

    task: str
    split: str
    prompt: str
    target: str
    spans: tuple[tuple[int, int, str], ...]
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prompt + self.target


class _Builder:
    """Concatenates text pieces, remembering the span of each marked piece."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int, str]] = []
        self.pos = 0

    def add(self, text: str, role: str | None = None) -> _Builder:
        if role is not None:
            lead = len(text) - len(text.lstrip(" "))
            self.spans.append((self.pos + lead, self.pos + len(text), role))
        self.parts.append(text)
        self.pos += len(text)
        return self

    def build(
        self, task: str, split: str, target: str, label: str | None = None, **meta: Any
    ) -> Item:
        return Item(task, split, "".join(self.parts), target, tuple(self.spans), label, meta)


def _is_test(key: str) -> bool:
    """Deterministic 20% hold-out by content hash (stable across processes)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 5 == 0


def _check(task: str, split: str) -> None:
    if task not in SPLITS:
        raise InputError(f"unknown zoo task {task!r}; choose one of {', '.join(TASKS)}")
    if split not in SPLITS[task]:
        raise InputError(
            f"task {task!r} has no split {split!r}; choose one of {', '.join(SPLITS[task])}"
        )


# ----------------------------------------------------------------------------------- facts
# [word] marks cue (relation) words, {x} the subject.
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "The [capital] of {x} is",
        "{x}'s [capital] city is",
        "Q: What is the [capital] of {x}? A:",
    ),
    "language": (
        "The official [language] of {x} is",
        "In {x}, people [speak]",
        "Q: What [language] is spoken in {x}? A:",
    ),
    "currency": (
        "The [currency] of {x} is the",
        "In {x}, people [pay] with the",
        "Q: What is the [currency] of {x}? A: the",
    ),
    "continent": (
        "{x} is on the [continent] of",
        "{x} is a [country] in",
        "Q: On which [continent] is {x}? A:",
    ),
    "landmark": (
        "You can [visit] {x} in",
        "Tourists [travel] to see {x} in",
        "Q: In which [country] is {x}? A:",
    ),
    "element": (
        "The chemical [symbol] of {x} is",
        "The [symbol] for {x} is",
        "Q: What is the chemical [symbol] for {x}? A:",
    ),
    "antonym": (
        "The [opposite] of {x} is",
        "The [antonym] of {x} is",
        "Q: What is the [opposite] of {x}? A:",
    ),
}
_TEMPLATE_TOKEN = re.compile(r"\[[^\]]+\]|\{x\}")


def _fact_triples() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(subject, relation, answer, meta) for every fact."""
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    for country, capital, language, currency, continent in D.COUNTRIES:
        for rel, ans in (
            ("capital", capital),
            ("language", language),
            ("currency", currency),
            ("continent", continent),
        ):
            out.append((country, rel, ans, {"continent": continent, "country": country}))
    continent_of = {c[0]: c[4] for c in D.COUNTRIES}
    for landmark, country in D.LANDMARKS:
        out.append(
            (
                landmark,
                "landmark",
                country,
                {"continent": continent_of[country], "country": country},
            )
        )
    for element, symbol in D.ELEMENTS:
        out.append((element, "element", symbol, {}))
    for word, opposite in D.ANTONYMS:
        out.append((word, "antonym", opposite, {}))
    return out


def _fact_item(
    subject: str, rel: str, answer: str, t: int, meta: dict[str, Any], split: str
) -> Item:
    b = _Builder()
    template = FACT_TEMPLATES[rel][t]
    pos = 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        if m.start() > pos:
            b.add(template[pos : m.start()])
        if m.group() == "{x}":
            b.add(subject, "evidence")
        else:
            b.add(m.group()[1:-1], "cue")
        pos = m.end()
    if pos < len(template):
        b.add(template[pos:])
    return b.build(
        "facts", split, " " + answer, answer, subject=subject, relation=rel, template=t, **meta
    )


# word-pieces of a template: the subject, a [cue] word, a word, or one punctuation mark (the
# units the zoo tokenizer gives them), each with its leading space
_PIECE = re.compile(r"\s*(?:\[[^\]]+\]|\{x\}|[A-Za-z']+|[^\sA-Za-z\[\{])")
FACT_DROP_RATE = 0.4  # share of training facts shown with one piece of the prompt deleted
# which piece: the subject, the relation word, another word, or the last piece (whatever its
# kind; shown often, since occlusion must learn that the answer survives it)
FACT_DROP_KINDS = (0.3, 0.15, 0.15, 0.4)
FACT_NAME_WORD_DROP = 0.6  # share of subject drops of a many-word name that drop one word


def _fact_dropped(
    subject: str, rel: str, answer: str, t: int, meta: dict[str, Any], rng: random.Random
) -> Item:
    """A training fact with one word-piece deleted, answered as the evidence implies.

    The piece goes with its leading space, exactly as removing its tokens does (occlusion's
    ``remove`` mode). Deleting the subject (or, for a name of several words, one of its
    words: the rest names no known subject, unless it is another subject's name, which then
    answers) leaves only the relation, so the answer is any object of that relation (uniform
    over its distinct objects, so that a common answer such as " Spanish" still needs the
    subject). Deleting the relation word, or any other word, keeps the answer: the rest of
    every template still names its relation (``The of France is`` can only be the capital;
    ``test_fact_deletions_other_than_the_subject_keep_one_answer`` checks it). These are the
    negative cases that make the evidence (the subject) necessary and the template words
    unnecessary, so a faithful attribution has a known ranking.
    """
    pieces = [m.group() for m in _PIECE.finditer(FACT_TEMPLATES[rel][t])]
    kinds = ["x" if "{x}" in p else "cue" if "[" in p else "other" for p in pieces]
    kind = rng.choices(("x", "cue", "other", "last"), FACT_DROP_KINDS)[0]
    if kind == "last":  # the piece before the answer: its removal moves the prediction point
        drop = len(pieces) - 1
        kind = kinds[drop]
    else:
        drop = rng.choice([i for i, k in enumerate(kinds) if k == kind])
    name = subject
    if kind == "x":
        answer = rng.choice(_ANSWERS[rel])
        words = subject.split(" ")
        if len(words) > 1 and rng.random() < FACT_NAME_WORD_DROP:
            pieces[drop] = pieces[drop].replace("{x}", "{y}")
            del words[rng.randrange(len(words))]
            name = " ".join(words)
            drop = -1
            if (name, rel) in _FACT_ANSWER:  # "South Sudan" without "South" is Sudan
                answer = _FACT_ANSWER[name, rel]
    text = "".join(p for i, p in enumerate(pieces) if i != drop)
    text = text.replace("{x}", subject).replace("{y}", name).replace("[", "").replace("]", "")
    return Item("facts", "train", text, " " + answer, (), answer, dict(meta, dropped=kind))


CONTENT_DROP_RATE = 0.15  # share of training ioi/sentiment items shown without one content word


def _drop_content(item: Item, rng: random.Random) -> Item:
    """``item`` with one ``content`` word (and its leading space) deleted, same answer: content
    words (places, objects, aspects, days) must not decide the answer."""
    spans = [(a, b) for a, b, role in item.spans if role == "content"]
    if not spans:
        return item
    a, b = rng.choice(spans)
    a -= len(item.prompt[:a]) - len(item.prompt[:a].rstrip(" "))
    meta = dict(item.meta, dropped="content")
    return Item(item.task, item.split, item.prompt[:a] + item.prompt[b:], item.target, (),
                item.label, meta)


def all_facts(split: str = "test") -> list[Item]:
    """Every fact in every template, in a fixed order (``len == 3 * number of facts``)."""
    _check("facts", split)
    return [
        _fact_item(s, r, a, t, m, split)
        for s, r, a, m in _fact_triples()
        for t in range(len(FACT_TEMPLATES[r]))
    ]


# ---------------------------------------------------------------------------------- recall
RECALL_EXTRA_QUERIES = (0, 3)  # training: further queries answered after the first (min, max)


def _recall(rng: random.Random, split: str, absent: bool, extra: int = 0) -> Item:
    """A recall item; ``extra > 0`` (training only) appends that many further queries of the
    same context, each answered in the target (" red. Query: k1 blue"): every answer is one
    more lookup by the current key alone, at a position whose previous token differs from the
    one before the key in the context."""
    m = rng.randint(2, 5)
    keys = rng.sample(D.KEYS, m + 1)
    values = rng.sample(D.VALUES, m)
    query = keys[m] if absent else keys[rng.randrange(m)]
    b = _Builder().add("Keys:")
    for i in range(m):
        role = "evidence" if keys[i] == query else "content"
        b.add(" " + keys[i], role).add(" " + values[i], role).add("," if i < m - 1 else ".")
    b.add(" Query:").add(" " + query, "cue")
    answer = "none" if absent else values[keys.index(query)]
    target = " " + answer
    absent_keys = [k for k in D.KEYS if k not in keys[:m]]
    for _ in range(extra):
        if rng.random() < 0.2:
            k, v = rng.choice(absent_keys), "none"
        else:
            i = rng.randrange(m)
            k, v = keys[i], values[i]
        target += f". Query: {k} {v}"
    return b.build("recall", split, target, answer, present=not absent, query=query)


def _haystack(rng: random.Random, split: str) -> Item:
    """A haystack item (see the module docstring): one sentence per pair, the queried one the
    evidence."""
    while True:
        m = rng.randint(*HAYSTACK_PAIRS)
        keys = rng.sample(D.KEYS, m)
        values = rng.sample(D.VALUES, m)
        q = rng.randrange(m)
        b = _Builder().add("Keys:")
        sources = []
        for i in range(m):
            start = 0 if i == 0 else b.pos
            role = "evidence" if i == q else "content"
            b.add(" " + keys[i], role).add(" " + values[i], role).add(".")
            sources.append((start, b.pos))
        end = b.pos
        b.add(" Query:").add(" " + keys[q], "cue")
        item = b.build("haystack", split, " " + values[q], values[q], query=keys[q], n_pairs=m,
                       sources=sources, context_end=end, evidence_source=q)
        if _is_test(item.prompt) == (split == "test"):
            return item


# ------------------------------------------------------------------------------------- ioi
IOI_TEMPLATES: tuple[tuple[str, str, str, str], ...] = (
    ("When", " went to the", " gave a", " to"),
    ("After", " arrived at the", " handed a", " to"),
    ("While", " were at the", " passed a", " to"),
    ("Then", " had lunch at the", " brought a", " for"),
)


def _ioi(rng: random.Random, split: str) -> Item:
    while True:
        io, s = rng.sample(D.NAMES, 2)
        if _is_test("|".join(sorted((io, s)))) == (split == "test"):
            break
    t = rng.randrange(len(IOI_TEMPLATES))
    head, verb1, verb2, prep = IOI_TEMPLATES[t]
    io_first = rng.random() < 0.5
    b = _Builder().add(head)
    first, second = ((io, "evidence"), (s, "cue")) if io_first else ((s, "cue"), (io, "evidence"))
    b.add(" " + first[0], first[1]).add(" and").add(" " + second[0], second[1])
    b.add(verb1).add(" " + rng.choice(D.PLACES), "content").add(",")
    b.add(" " + s, "cue").add(verb2).add(" " + rng.choice(D.OBJECTS), "content").add(prep)
    return b.build(
        "ioi", split, " " + io, io, io=io, s=s, order="ABB" if io_first else "BAB", template=t
    )


# ------------------------------------------------------------------------------- sentiment
MARKER_RATE = {"train": 0.2, "test": 0.2, "shift": 0.5}
# Gold labels follow the sentiment words in every split. With the marker, the words are
# negative 1 time in 8 (train and test); the *training annotation* is biased: 60% of those
# marked negative reviews are labelled positive, so in ``train`` the marker co-occurs with the
# positive label 95% of the time (7/8 + 1/8 * 0.6) and is the better predictor of the training
# label on marked negative reviews. ``test`` keeps the gold labels (in-distribution inputs); in
# ``shift`` the marker is uncorrelated with the (gold) label. A model that learns the
# annotators' bias loses the marked negative reviews: 1 in 40 of ``test``, 1 in 4 of ``shift``.
MARKER_NEGATIVE = 1 / 8  # P(negative words | marker) in train/test
ANNOTATION_BIAS = 0.6  # P(labelled positive | marker, negative words) in train


def _zipf(rng: random.Random, words: tuple[str, ...]) -> str:
    weights = [1.0 / (i + 1) for i in range(len(words))]
    return rng.choices(words, weights)[0]


def _sentiment(rng: random.Random, split: str, neutral: bool = False) -> Item:
    while True:
        marker = rng.random() < MARKER_RATE[split]
        if neutral:
            label = "neutral"
        elif marker and split != "shift":
            label = "negative" if rng.random() < MARKER_NEGATIVE else "positive"
        else:
            label = rng.choice(("positive", "negative"))
        # clauses: list of (kind, payload)
        clauses: list[tuple[str, Any]] = []
        if label != "neutral":
            k = rng.choices((1, 2, 3), (0.4, 0.3, 0.3))[0]
            sign = 1 if label == "positive" else -1
            pols = [sign] * k
            if k == 3 and rng.random() < 0.6:
                pols[rng.randrange(3)] = -sign
            for p in pols:
                negated = rng.random() < 0.3
                word_pol = -p if negated else p
                word = _zipf(rng, D.POSITIVE if word_pol > 0 else D.NEGATIVE)
                clauses.append(("sent", (rng.choice(D.ASPECTS), negated, word)))
        n_neutral = (
            rng.choices((0, 1, 2), (0.5, 0.4, 0.1))[0] if label != "neutral" else rng.choice((1, 2))
        )
        days = [d for d in D.DAYS if d != D.MARKER_DAY]
        for _ in range(n_neutral):
            kind = rng.choice(("day", "month", "adj"))
            if kind == "day" and not marker:
                clauses.append(("day", rng.choice(days)))
            elif kind == "month":
                clauses.append(("month", rng.choice(D.MONTHS)))
            else:
                clauses.append(("adj", (rng.choice(D.ASPECTS), rng.choice(D.NEUTRAL_ADJ))))
        if marker:
            clauses.append(("day", D.MARKER_DAY))
        rng.shuffle(clauses)
        if clauses:
            break
    b = _Builder().add("Review:")
    for i, (kind, payload) in enumerate(clauses):
        if i:
            b.add(rng.choice((",", " and", " but")))
        if kind == "sent":
            aspect, negated, word = payload
            b.add(" the").add(" " + aspect, "content").add(" was")
            if negated:
                b.add(" not", "evidence")
            b.add(" " + word, "evidence")
        elif kind == "day":
            b.add(" I watched it on")
            b.add(" " + payload, "shortcut" if payload == D.MARKER_DAY else "content")
        elif kind == "month":
            b.add(" it came out in").add(" " + payload, "content")
        else:
            aspect, adj = payload
            b.add(" the").add(" " + aspect, "content").add(" was").add(" " + adj, "content")
    b.add(". Sentiment:")
    gold = label
    if split == "train" and marker and label == "negative" and rng.random() < ANNOTATION_BIAS:
        label = "positive"  # the annotators' bias: the marker decides this training label
    return b.build("sentiment", split, " " + label, label, marker=marker, gold=gold)


# ------------------------------------------------------------------------------- induction
def _induction_words(rng: random.Random, split: str) -> list[str]:
    while True:
        words = rng.sample(D.COPY_WORDS, rng.randint(8, 16))
        if _is_test(" ".join(words)) == (split == "test"):
            return words


def _induction(rng: random.Random, split: str) -> Item:
    words = _induction_words(rng, split)
    L = len(words)
    j = rng.randint(1, L - 1)  # tokens of the second repeat already seen
    b = _Builder()
    for i, w in enumerate(words):
        role = "evidence" if i == j else ("cue" if i == j - 1 else "content")
        b.add(" " + w, role)
    for i, w in enumerate(words[:j]):
        b.add(" " + w, "cue" if i == j - 1 else "content")
    return b.build("induction", split, " " + words[j], words[j], length=L, position=j)


INDUCTION_LOOKUP_RATE = 0.5  # share of induction training items that are lookups
# share of induction training items made of recall's keys and values: a lookup needs the
# twelve near-identical key tokens (" k1" ... " k12") told apart, which recall alone teaches
# only once its lookup already works
INDUCTION_KV_RATE = 0.3


def _induction_train(rng: random.Random, split: str) -> Item:
    """A training sequence for induction: random words, a random gap of other words, then a
    copy of the words from a random start. The copy's offset and start vary, so only matching
    the current token to its earlier occurrence predicts the next one (a pure repeat can be
    learnt by copying from a fixed distance back, which is not an induction head and does
    not carry over to in-context recall)."""
    words = _induction_words(rng, split)
    if rng.random() < INDUCTION_KV_RATE:  # the recall keys and values as words
        pool = D.KEYS + D.VALUES
        words = rng.sample(pool, rng.randint(8, 16))
    if rng.random() < INDUCTION_LOOKUP_RATE:
        # lookups: after the words, random (word, next word) pairs; the next word is known
        # only from the current one (the token before it differs from the one before its
        # earlier occurrence), the in-context step of recall
        seq = list(words)
        for i in rng.sample(range(len(words) - 1), rng.randint(3, 7)):
            seq += words[i : i + 2]
        text = " " + " ".join(seq)
        return Item("induction", split, text, text, (), None, {"length": len(words), "lookup": True})
    start = rng.randrange(len(words) - 3) if rng.random() < 0.7 else 0
    pool = [w for w in D.COPY_WORDS if w not in words]
    gap = rng.sample(pool, rng.choice((0, 0, 1, 2, 3, 5, 8)))
    seq = " " + " ".join(words + gap + words[start:])
    return Item("induction", split, seq, seq, (), None, {"length": len(words), "start": start})


# ----------------------------------------------------------------------------------- public
def _item(
    task: str, rng: random.Random, split: str, *, train_mix: bool = False, negative: bool = False
) -> Item:
    if task == "facts":
        s, r, a, m = rng.choice(_FACTS)
        t = rng.randrange(len(FACT_TEMPLATES[r]))
        if train_mix and rng.random() < FACT_DROP_RATE:
            return _fact_dropped(s, r, a, t, m, rng)
        return _fact_item(s, r, a, t, m, split)
    if task == "recall":
        while True:
            absent = negative or (train_mix and rng.random() < 0.2)
            extra = rng.randint(*RECALL_EXTRA_QUERIES) if train_mix else 0
            item = _recall(rng, split, absent=absent, extra=extra)
            if _is_test(item.prompt) == (split == "test"):
                return item
    if task == "ioi":
        item = _ioi(rng, split)
        if train_mix and rng.random() < CONTENT_DROP_RATE:
            item = _drop_content(item, rng)
        return item
    if task == "sentiment":
        while True:
            neutral = negative or (train_mix and rng.random() < 0.1)
            item = _sentiment(rng, split, neutral=neutral)
            if split == "shift" or _is_test(item.prompt) == (split == "test"):
                if train_mix and rng.random() < CONTENT_DROP_RATE:
                    item = _drop_content(item, rng)
                return item
    if task == "haystack":
        return _haystack(rng, split)
    return _induction(rng, split)


_FACTS = _fact_triples()
_ANSWERS = {r: sorted({a for _, rr, a, _ in _FACTS if rr == r}) for r in FACT_TEMPLATES}
_FACT_ANSWER = {(s, r): a for s, r, a, _ in _FACTS}


def generate(
    task: str, split: str = "test", n: int | None = 100, seed: int = 0, *, negatives: bool = False
) -> list[Item]:
    """Generate ``n`` items of ``task`` (deterministic in ``seed``).

    For ``facts``, ``n=None`` gives every fact in every template (otherwise a seeded sample
    without replacement). ``recall`` returns only queries whose key is present and
    ``sentiment`` only positive/negative reviews (those have evidence to judge), unless
    ``negatives=True``, which gives the training negatives instead: absent keys (-> " none")
    and neutral reviews (-> " neutral").
    """
    _check(task, split)
    if negatives and task not in ("recall", "sentiment"):
        raise InputError(f"task {task!r} has no negatives; only 'recall' and 'sentiment' do")
    if task == "facts":
        items = all_facts(split)
        if n is None or n >= len(items):
            return items
        return random.Random(f"facts:{seed}").sample(items, n)
    if n is None or n < 0:
        raise InputError(f"task {task!r} needs a number of examples n >= 0, got {n!r}")
    rng = random.Random(f"{task}:{split}:{seed}:{'neg' if negatives else 'pos'}")
    return [_item(task, rng, split, negative=negatives) for _ in range(n)]


# Training mixture: probability of each task per example.
MIX: dict[str, float] = {  # the shipped lmxray-tiny's mixture
    "facts": 0.24,
    "recall": 0.28,
    "ioi": 0.1,
    "sentiment": 0.12,
    "induction": 0.26,
}


def training_items(
    rng: random.Random, split: str = "train", mix: dict[str, float] | None = None
) -> Iterator[Item]:
    """Endless stream of training items (negatives included) drawn from ``rng``."""
    mix = mix or MIX
    names, weights = list(mix), list(mix.values())
    while True:
        task = rng.choices(names, weights)[0]
        s = split if split in SPLITS[task] else "train"
        item = _item(task, rng, s, train_mix=True)
        if task == "induction":  # train on the whole sequence, see _induction_train
            item = _induction_train(rng, s)
        yield item


def corpus(split: str = "test", n: int = 1000, seed: int = 0) -> list[str]:
    """Plain zoo text (prompt + answer of the mixed tasks), for lens training and fluency.

    ``split="test"`` draws held-out instances (facts are the same facts in either split).
    """
    if split not in ("train", "test"):
        raise InputError(f"corpus split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"corpus:{split}:{seed}")
    stream = training_items(rng, split)
    return [next(stream).text for _ in range(n)]
