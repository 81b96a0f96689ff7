"""Request limits of ``lmxray serve`` and the checks that turn a JSON request into job arguments.

Every check raises :class:`lmxray.errors.InputError` with one line saying what is wrong and how
to fix it; the server answers it with status 400 (413 for a body over the size limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError

__all__ = ["Limits", "text", "optional_text", "integer", "choice", "choices", "flag"]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the server is shared; a request must stay small)."""

    prompt_chars: int = field(default=2000, metadata={"about": "Characters in a prompt, target, foil or patching prompt."})
    new_tokens: int = field(default=20, metadata={"about": "Tokens generated when no target is given."})
    steps: int = field(default=64, metadata={"about": "Integration steps (integrated gradients)."})
    samples: int = field(default=64, metadata={"about": "Samples of the sampling methods and noise draws of causal tracing."})
    examples: int = field(default=200, metadata={"about": "Examples in one leaderboard."})
    chain_tokens: int = field(default=256, metadata={"about": "Tokens of a chain of thought (self-explanation tests)."})
    texts: int = field(default=2000, metadata={"about": "Zoo texts read for an SAE feature view."})
    upload_bytes: int = field(default=1_000_000, metadata={"about": "Size of an uploaded JSONL."})
    body_bytes: int = field(default=2_000_000, metadata={"about": "Size of a request body."})
    methods: int = field(default=2, metadata={"about": "Methods side by side in Explain."})
    queue: int = field(default=8, metadata={"about": "Jobs waiting (one more gets 429)."})
    kept_jobs: int = field(default=64, metadata={"about": "Finished jobs kept for their results and exports."})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def text(body: dict[str, Any], name: str, limit: int) -> str:
    """A required, non-blank string of at most ``limit`` characters."""
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} is missing or empty; give some text")
    if len(value) > limit:
        raise InputError(f"{name} has {len(value)} characters, over the limit of {limit}; shorten it")
    return value


def optional_text(body: dict[str, Any], name: str, limit: int) -> str | None:
    """``None`` when absent or empty, else as :func:`text`."""
    value = body.get(name)
    if value is None or value == "":
        return None
    return text(body, name, limit)


def integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """A whole number in ``[low, high]`` (``default`` when absent)."""
    value = body.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, got {value!r}"[:200])
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
    return value


def choice(body: dict[str, Any], name: str, options: list[str] | tuple[str, ...], default: str | None = None) -> str:
    """One of ``options``."""
    value = body.get(name, default)
    if value not in options:
        raise InputError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}"[:300])
    return str(value)


def choices(body: dict[str, Any], name: str, options: list[str] | tuple[str, ...], most: int,
            default: list[str]) -> list[str]:
    """A non-empty list (or comma-separated string) of distinct ``options``, at most ``most``."""
    value = body.get(name, default)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(f"{name} must be a non-empty list of names")
    if len(value) > most:
        raise InputError(f"{name} lists {len(value)} entries, at most {most} are allowed")
    for v in value:
        if v not in options:
            raise InputError(f"unknown {name[:-1] if name.endswith('s') else name} {v!r}; "
                             f"choose among: {', '.join(options)}"[:300])
    return list(dict.fromkeys(value))


def flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}"[:200])
    return value
