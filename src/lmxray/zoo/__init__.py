"""Model organisms: generated tasks with known ground truth and the small models trained on them.

The shipped model ``lmxray-tiny`` (a 4-layer Llama trained by :mod:`lmxray.zoo.train` on all
tasks of :mod:`lmxray.zoo.tasks`) is the offline default of ``lmxray.load()`` and the ground
truth for judging explanation methods::

    from lmxray import zoo
    zoo.model_path()                      # Path to src/lmxray/zoo/models/lmxray-tiny
    ex = zoo.dataset("ioi", n=50)         # Examples, ground truth verified on the model
    [e for e in ex if e.verified]         # judge methods on these only
    zoo.corpus("test", n=200)             # plain held-out zoo text (lens training, fluency)

Importing this package is cheap (no torch); model code loads lazily.
"""

from __future__ import annotations

from pathlib import Path

from lmxray.errors import InputError
from lmxray.zoo._dataset import Example, to_example, to_examples
from lmxray.zoo.tasks import SPLITS, TASKS, Item, corpus, generate

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
]

_MODELS_DIR = Path(__file__).resolve().parent / "models"


def models() -> list[str]:
    """Names of the shipped zoo models."""
    if not _MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in _MODELS_DIR.iterdir() if (p / "config.json").is_file())


def model_path(name: str = "lmxray-tiny") -> Path:
    """Folder of a shipped zoo model (loadable with ``AutoModelForCausalLM.from_pretrained``)."""
    path = _MODELS_DIR / name
    if not (path / "config.json").is_file():
        known = ", ".join(models()) or "none installed"
        raise InputError(
            f"no zoo model named {name!r} (shipped: {known}); use zoo.model_path() for the default"
        )
    return path


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
    from lmxray.zoo import verify as _verify

    items = generate(name, split, n, seed)
    model, tokenizer = _verify.load(model_path)
    examples = to_examples(items, tokenizer)
    if verify:
        examples = _verify.verify(examples, model, tokenizer)
    return examples


def __getattr__(name: str):  # lazy: `zoo.train`, `zoo.verify` submodules without torch at import
    if name in ("train", "verify", "cli"):
        import importlib

        return importlib.import_module(f"lmxray.zoo.{name}")
    raise AttributeError(f"module 'lmxray.zoo' has no attribute {name!r}")
