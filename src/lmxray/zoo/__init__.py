"""Model organisms: generated tasks with known ground truth and the small models trained on them.

The shipped model ``lmxray-tiny`` (a 4-layer Llama trained by :mod:`lmxray.zoo.train` on all
tasks of :mod:`lmxray.zoo.tasks`) is the offline default of ``lmxray.load()`` and the ground
truth for judging explanation methods::

    from lmxray import zoo
    zoo.model_path()                      # Path to src/lmxray/zoo/models/lmxray-tiny
    ex = zoo.dataset("ioi", n=50)         # Examples, ground truth verified on the model
    [e for e in ex if e.verified]         # judge methods on these only
    zoo.corpus("test", n=200)             # plain held-out zoo text (lens training, fluency)

Importing this package is cheap (no torch); torch and transformers load when a model is used.
"""

from __future__ import annotations

from pathlib import Path

from lmxray.zoo import verify as _verify
from lmxray.zoo._dataset import Example, to_example, to_examples
from lmxray.zoo._paths import model_path, models
from lmxray.zoo.tasks import SPLITS, TASKS, Item, corpus, generate
from lmxray.zoo.verify import ZooEvaluation

__all__ = [
    "TASKS",
    "SPLITS",
    "Example",
    "Item",
    "model_path",
    "models",
    "dataset",
    "corpus",
    "generate",
    "to_example",
    "to_examples",
    "ZooEvaluation",
]

def dataset(
    name: str,
    split: str = "test",
    n: int | None = 100,
    seed: int = 0,
    *,
    verify: bool = True,
    model_path: str | Path | None = None,
) -> list[Example]:
    """Examples of task ``name`` with ground-truth token indices, verified on a zoo model.

    Args:
        name: one of ``TASKS`` (``facts``, ``recall``, ``ioi``, ``sentiment``, ``induction``).
        split: ``"test"`` (held out), ``"train"``, or for sentiment ``"shift"``.
        n: number of examples (``facts`` with ``n=None``: every fact in every template).
        seed: generator seed; the same arguments always give the same examples.
        verify: check each example's ground truth on the model (sets ``Example.verified``).
        model_path: a zoo model folder; default the shipped ``lmxray-tiny``. Its tokenizer
            defines the token indices.

    Example::

        ex = dataset("facts", n=20)[0]
        ex.prompt, ex.target, [ex.tokens[i] for i in ex.evidence], ex.verified
    """
    items = generate(name, split, n, seed)
    model, tokenizer = _verify.load(model_path)
    examples = to_examples(items, tokenizer)
    if verify:
        examples = _verify.verify(examples, model, tokenizer)
    return examples


def __getattr__(name: str):  # lazy: the training module loads on first use
    if name in ("train", "verify"):
        import importlib

        return importlib.import_module(f"lmxray.zoo.{name}")
    raise AttributeError(f"module 'lmxray.zoo' has no attribute {name!r}")
