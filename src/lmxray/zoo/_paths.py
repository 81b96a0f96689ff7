"""Where the shipped zoo models live."""

from __future__ import annotations

from pathlib import Path

from lmxray.errors import InputError

__all__ = ["models", "model_path"]

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
