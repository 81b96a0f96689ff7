"""``Model``: a thin wrapper over a native Hugging Face causal LM and its tokenizer.

lmxray never re-implements the network: every forward pass is the HF module's own. The wrapper
adds what explanation methods need: tokenisation conventions (prompt with special tokens, target
without), left-padded batches with correct attention masks and position ids, embedding access,
forwards from embeddings that compute logits only where a target needs them, greedy generation,
and chat-template prompts. It never mutates the user's model or tokenizer.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN, NewGELUActivation
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .errors import InputError, ModelLoadError, NumericalError
from .hooks import intervene as _intervene
from .hooks import run_with_cache

if TYPE_CHECKING:  # pragma: no cover
    from .result import Attribution

__all__ = ["Model", "load", "load_tokenizer", "embedded_model_path", "check_device_map", "DEFAULT_MODEL",
           "EMBEDDED_MODELS", "DEVICE_MAP_STRATEGIES"]

DEFAULT_MODEL = "lmxray-tiny"
#: the models shipped inside the package (``lmxray/zoo/models/<name>``), loadable by name offline
EMBEDDED_MODELS = Path(__file__).resolve().parent / "zoo" / "models"


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path | None:
    """The folder of a model shipped inside the package, or ``None`` when ``name`` is not one."""
    if not name or "/" in name or name.startswith("."):
        return None
    path = EMBEDDED_MODELS / name
    return path if (path / "config.json").is_file() else None


def _default_model_path() -> Path:
    path = embedded_model_path(DEFAULT_MODEL)
    if path is None:
        raise ModelLoadError(
            f"the embedded default model is missing at {EMBEDDED_MODELS / DEFAULT_MODEL}; "
            "reinstall lmxray or pass --model"
        )
    return path


def _offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT`` or huggingface.co) opens quickly."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _resolve_source(name_or_path: str | os.PathLike[str], what: str) -> str:
    """The folder or hub id to load ``name_or_path`` (a model or a tokenizer) from.

    A local folder wins; then an embedded model name (``lmxray-tiny``); then a hub id, read from
    the local cache when it is there. A hub id that is neither cached nor reachable (offline, or
    ``HF_HUB_OFFLINE=1``) fails at once with one line instead of minutes of retries.
    """
    display = str(name_or_path)
    path = os.path.expanduser(display)
    if not path.strip():
        raise InputError(f"{what} name is empty; pass a hub id or a local folder")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ModelLoadError(f"{path} is not a {what} folder")
        if what == "model" and not os.path.exists(os.path.join(path, "config.json")):
            raise ModelLoadError(f"{path} is not a model folder (no config.json in it)")
        return path
    if _looks_like_path(path):
        raise ModelLoadError(f"{what} folder {path} does not exist; check the path")
    embedded = embedded_model_path(path)
    if embedded is not None:
        return str(embedded)
    try:
        AutoConfig.from_pretrained(path, local_files_only=True)
        return path  # cached (the config at least; the rest may still download)
    except Exception:  # not in the local cache
        pass
    if _offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face hub is unreachable"
        raise ModelLoadError(
            f"{display!r} is not a local folder, an embedded model ({DEFAULT_MODEL}) or in the "
            f"Hugging Face cache, and {why}; check the name, connect, or pass a local folder"
        )
    return path


def load_tokenizer(name_or_path: str | os.PathLike[str], *, trust_remote_code: bool = False) -> Any:
    """A tokenizer by hub id, folder or embedded model name (``lmxray-tiny``), failing fast
    (one line) when it is not local and the hub cannot be reached."""
    path = _resolve_source(name_or_path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors
        raise ModelLoadError(f"cannot load the tokenizer {str(name_or_path)!r}: {_one_line(exc)}") from None


def _resolve_dtype(dtype: Any) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        table = {
            "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
            "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        }
        if dtype in table:
            return table[dtype]
    raise InputError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _is_hub_id(name)


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: Any = None,
    device_map: Any = None,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
) -> Model:
    """Load a causal LM as an lmxray :class:`Model`.

    Args:
        name_or_path: a Hugging Face hub id, a local folder, or ``None`` for the embedded default
            model (``lmxray-tiny``, shipped inside the package; works offline).
        model, tokenizer: objects already in memory (then ``name_or_path`` is ignored).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the model's current device.
        dtype: ``torch.float32`` / ``"bfloat16"`` / ``"auto"``...
        device_map: ``accelerate`` placement across devices: ``"auto"``, ``"balanced"``,
            ``"balanced_low_0"``, ``"sequential"``, one device (``"cuda:1"``), or a dict
            ``{module name: device}`` where a device may be ``"cpu"`` or ``"disk"`` (offload;
            ``"disk"`` needs ``offload_folder=``). Every method gives the same numbers as on one
            device. Not combined with ``device``.
        trust_remote_code: off unless you ask; passed to ``from_pretrained``.

    Example:
        >>> m = lmxray.load()  # doctest: +SKIP
        >>> m = lmxray.load("gpt2", dtype="float32")  # doctest: +SKIP
    """
    if device_map is not None:
        if model is not None:
            raise InputError("device_map= is not applied to a model passed in memory; place it with "
                             "accelerate.dispatch_model (or load it by name with device_map=)")
        device_map = check_device_map(device_map, device, from_pretrained_kwargs)
    if model is not None:
        if tokenizer is None:
            raise InputError("load(model=...) also needs tokenizer=...; pass the model's tokenizer")
        _check_causal(model)
        if device is not None:
            raise InputError(
                "device= is not applied to a model passed in memory (lmxray never moves your "
                "model); call model.to(device) first"
            )
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        return Model(model, tokenizer, name=str(name))

    resolved = _resolve_dtype(dtype)
    if name_or_path is None:
        path: str = str(_default_model_path())
        display = DEFAULT_MODEL
    else:
        path = _resolve_source(name_or_path, "model")
        display = str(name_or_path)

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors here
        raise ModelLoadError(f"cannot load a model config from {display!r}: {_one_line(exc)}") from None
    if getattr(config, "is_encoder_decoder", False) or (
        config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code
    ):
        raise ModelLoadError(
            f"{display!r} is a {config.model_type!r} model, not a causal (decoder-only) language "
            "model; lmxray explains AutoModelForCausalLM models"
        )
    if config.model_type in _ENCODER_ONLY and not getattr(config, "is_decoder", False):
        raise ModelLoadError(
            f"{display!r} is an encoder-only {config.model_type!r} model, not a causal language model"
        )
    _check_module_names(config, device_map, trust_remote_code)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    if resolved is not None:
        kwargs["dtype" if _TRANSFORMERS_MAJOR >= 5 else "torch_dtype"] = resolved
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tok = tokenizer or AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        hf: Any = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {display!r}: {_one_line(exc)}") from None
    hf.eval()
    if device is not None and device_map is None:
        try:
            hf.to(torch.device(device))
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(f"cannot move the model to {device!r}: {_one_line(exc)}") from None
    return Model(hf, tok, name=display)


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_placement(value: Any, where: str) -> Any:
    """One placement: a GPU index, ``"cpu"``, ``"disk"``, ``"meta"`` or a torch device string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        dev = torch.device("cuda", value)
    elif isinstance(value, str | torch.device) and str(value) in ("disk", "meta"):
        return str(value)
    else:
        try:
            dev = torch.device(value)
        except (RuntimeError, TypeError):
            raise InputError(f"device_map{where}: {value!r} is not a device; use 'cpu', 'disk', 'cuda:N' "
                             "or a GPU index") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device_map{where}: {value!r} names a GPU this machine does not have "
                         f"({torch.cuda.device_count()} visible); use 'cpu' or 'disk' offload")
    return value


def check_device_map(device_map: Any, device: Any, kwargs: dict[str, Any]) -> Any:
    """``device_map`` checked before any loading: a strategy name, one device, or a dict of
    module name → device; one-line errors for anything else."""
    if device is not None:
        raise InputError("give either device= or device_map=, not both (device_map places the model)")
    if importlib.util.find_spec("accelerate") is None:
        raise InputError("device_map needs accelerate: pip install 'lmxray[scale]' (or pip install accelerate)")
    if isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES:
        return device_map
    if isinstance(device_map, dict):
        if not device_map:
            raise InputError("device_map is an empty dict; map module names to devices, e.g. {'': 'cpu'}")
        for name, value in device_map.items():
            if not isinstance(name, str):
                raise InputError(f"device_map keys are module names (strings), got {name!r}")
            _check_placement(value, f"[{name!r}]")
        if "disk" in device_map.values() and not kwargs.get("offload_folder"):
            raise InputError("device_map offloads to 'disk'; also give offload_folder='a folder for the weights'")
        return device_map
    if isinstance(device_map, str) and not device_map.strip():
        raise InputError(f"device_map is empty; use one of {', '.join(DEVICE_MAP_STRATEGIES)}, a device or a dict")
    if isinstance(device_map, str) and device_map == "disk":
        raise InputError("device_map='disk' would leave nothing to compute on; map some modules to a device")
    try:
        torch.device(device_map)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device_map {device_map!r}; use one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                         "a device ('cpu', 'cuda:1') or a dict {module name: device}") from None
    return _check_placement(device_map, "")


def _check_module_names(config: Any, device_map: Any, trust_remote_code: bool) -> None:
    """Every key of a dict ``device_map`` names a module of the model (checked on an empty,
    weightless copy before any weight is read; transformers would ignore an unknown name)."""
    if not isinstance(device_map, dict):
        return
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = {name for name, _ in skeleton.named_modules()}
    unknown = sorted(k for k in device_map if k not in names)
    if unknown:
        tops = ", ".join(sorted(n for n in names if n and n.count(".") <= 1)[:8])
        raise InputError(f"device_map names modules the model does not have: {', '.join(unknown)}; "
                         f"its modules include: {tops}")


_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text"}


def _transformers_major() -> int:
    return int(transformers.__version__.split(".")[0])


_TRANSFORMERS_MAJOR = _transformers_major()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _check_causal(model: Any) -> None:
    if not isinstance(model, PreTrainedModel):
        raise ModelLoadError(
            f"expected a transformers PreTrainedModel, got {type(model).__name__}"
        )
    cfg = model.config
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if getattr(cfg, "is_encoder_decoder", False) or (
        type(model).__name__ not in causal_classes and not hasattr(model, "get_output_embeddings")
    ) or (cfg.model_type in _ENCODER_ONLY and not getattr(cfg, "is_decoder", False)):
        raise ModelLoadError(
            f"{type(model).__name__} is not a causal (decoder-only) language model"
        )
    if model.get_output_embeddings() is None:
        raise ModelLoadError(f"{type(model).__name__} has no language-model head (use *ForCausalLM)")


_ATTRIBUTION_PACKAGE = "lmxray.attribution"


class Model:
    """A Hugging Face causal LM + tokenizer, with what explanation methods need.

    Attributes:
        hf: the native ``transformers`` model (never modified by lmxray).
        tokenizer: its tokenizer.
        name: the hub id / folder / class name it came from.
    """

    def __init__(self, hf: Any, tokenizer: Any, name: str = "") -> None:
        _check_causal(hf)
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        params = inspect.signature(hf.forward).parameters
        self._accepts_position_ids = "position_ids" in params
        self._logits_kw = (
            "logits_to_keep" if "logits_to_keep" in params
            else "num_logits_to_keep" if "num_logits_to_keep" in params else None
        )

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device, or, when accelerate offloads them
        (``device_map`` with ``"cpu"``/``"disk"``), the device their forward runs on."""
        emb = self.hf.get_input_embeddings()
        dev = _execution_device(emb)
        return dev if dev is not None else emb.weight.device

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model computes on (several under a ``device_map``; offloaded modules
        count where they run), input device first: what the memory budget is read over."""
        placed = getattr(self.hf, "hf_device_map", None) or {}
        out = [self.device]
        for where in placed.values():
            if where in ("cpu", "disk"):
                continue  # offloaded: runs on the main execution device (or on the CPU itself)
            dev = torch.device(f"cuda:{where}") if isinstance(where, int) else torch.device(where)
            if dev not in out:
                out.append(dev)
        return out

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    @property
    def n_layers(self) -> int:
        c = self.config
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        raise AttributeError("cannot tell the number of layers from the config")

    @property
    def d_model(self) -> int:
        return int(self.hf.get_input_embeddings().weight.shape[1])

    @property
    def n_heads(self) -> int:
        c = self.config
        for key in ("num_attention_heads", "n_head"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        return 1

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_output_embeddings().weight.shape[0])

    @property
    def max_length(self) -> int | None:
        """The model's context length (positions), or None when it does not say."""
        c = self.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            v = getattr(c, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for v in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if v is not None:
                return int(v)
        return 0

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, {type(self.hf).__name__}, layers={self.n_layers}, "
            f"d={self.d_model}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; prompts get the tokenizer's special tokens (e.g. BOS)."""
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_target(self, text: str) -> list[int]:
        """Token ids of a continuation (no special tokens)."""
        return self.encode(text, add_special_tokens=False)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Readable strings for each id (decoded one by one, so ``Ġ``/``▁`` become spaces)."""
        out = []
        for i in ids:
            s = self.tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if s == "" or "\ufffd" in s:
                s = self.tokenizer.convert_ids_to_tokens(int(i))
            out.append(s)
        return out

    def chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Build a prompt string with the tokenizer's chat template.

        Example:
            >>> m.chat([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"the tokenizer of {self.name!r} has no chat template; write the prompt as plain text"
            )
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        if self._template_adds_bos(text):
            # the template already holds BOS: strip it so encode() does not add a second one
            bos = self.tokenizer.bos_token
            text = text[len(bos):]
        return text

    def _template_adds_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        if not bos or not text.startswith(bos):
            return False
        ids = self.encode("x")
        return bool(ids) and ids[0] == self.tokenizer.bos_token_id

    # ------------------------------------------------------------------ batches
    def pad_batch(
        self, seqs: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-pad token id sequences: ``(input_ids, attention_mask, position_ids)`` ``[B, L]``."""
        if not seqs:
            raise InputError("empty batch")
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s):
                ids[i, length - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
                mask[i, length - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return ids.to(dev), mask.to(dev), pos.to(dev)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[..., d_model]`` of token ids (the embedding layer's output)."""
        return self.hf.get_input_embeddings()(input_ids)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding weights ``[vocab, d_model]`` (a copy on :attr:`device` when
        accelerate has offloaded them to CPU or disk)."""
        emb = self.hf.get_input_embeddings()
        if emb.weight.device.type != "meta":
            return emb.weight
        from accelerate.utils import align_module_device

        with align_module_device(emb, self.device):
            return emb.weight.detach().clone()

    def forward(
        self,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One forward pass of the native model; returns the HF output object.

        ``logits_to_keep=k`` computes logits for the last ``k`` positions only (all target steps
        of a left-padded batch are the last positions). Raises :class:`NumericalError` when the
        logits hold NaN or inf.
        """
        kw: dict[str, Any] = dict(kwargs)
        kw.setdefault("use_cache", False)
        if (
            attention_mask is not None
            and "past_key_values" not in kw
            and bool(attention_mask.all())
            and (position_ids is None or bool((position_ids == self._arange_like(position_ids)).all()))
        ):
            # no padding: let the attention kernel take its causal fast path (no explicit mask)
            attention_mask = position_ids = None
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if position_ids is not None and self._accepts_position_ids:
            kw["position_ids"] = position_ids
        if logits_to_keep is not None and self._logits_kw is not None:
            kw[self._logits_kw] = logits_to_keep
        out = self.hf(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)
        if logits_to_keep is not None and self._logits_kw is None:
            out.logits = out.logits[:, -logits_to_keep:]
        if check_finite and not torch.isfinite(out.logits).all():
            raise NumericalError(
                f"the model {self.name!r} produced NaN/inf logits; check its weights and dtype "
                "(try dtype=float32)"
            )
        return out

    @staticmethod
    def _arange_like(position_ids: torch.Tensor) -> torch.Tensor:
        return torch.arange(position_ids.shape[-1], device=position_ids.device).expand_as(position_ids)

    def logits(self, text_or_ids: str | Sequence[int]) -> torch.Tensor:
        """Logits ``[L, vocab]`` of one prompt (convenience)."""
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        input_ids, mask, pos = self.pad_batch([ids])
        with torch.no_grad():
            return self.forward(input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[0]

    @torch.no_grad()
    def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation ids (stops after EOS, which is not returned)."""
        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        self.check_length(len(prompt_ids) + max_new_tokens)
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        mask = torch.ones_like(ids)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )
        out = self.hf.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        new = out[0, ids.shape[1]:].tolist()
        eos = self.eos_token_id
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        return new

    def generate(self, prompt: str, max_new_tokens: int = 20) -> str:
        """Greedy continuation text of ``prompt``."""
        new = self.generate_ids(self.encode(prompt), max_new_tokens)
        return self.tokenizer.decode(new, skip_special_tokens=False)

    def check_length(self, n: int) -> None:
        limit = self.max_length
        if limit is not None and n > limit:
            raise InputError(
                f"prompt + target is {n} tokens, longer than the model's context of {limit}; "
                "shorten the prompt or the target"
            )

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Temporarily use the eager attention implementation (attention weights available)."""
        cfg = self.hf.config
        before = getattr(cfg, "_attn_implementation", None)
        if before in (None, "eager"):
            yield
            return
        setter = getattr(self.hf, "set_attn_implementation", None)
        try:
            if setter is not None:
                setter("eager")
            else:
                cfg._attn_implementation = "eager"
            yield
        finally:
            if setter is not None:
                setter(before)
            else:
                cfg._attn_implementation = before

    @contextlib.contextmanager
    def fused_activations(self) -> Iterator[None]:
        """Temporarily compute ``gelu_new`` (GPT-2, GPT-J, GPT-Neo, Phi, CodeGen) with PyTorch's
        fused tanh-GELU kernel: the same function (transformers' ``gelu_pytorch_tanh``; they
        differ by float rounding, <= 3e-7 on unit-scale inputs), about 4x faster on CPU, where the
        unfused one (five passes over ``[batch, positions, d_ff]``) is a fifth of a forward pass.
        Perturbation scoring runs inside it; other models, and an activation module a hook
        watches, are unchanged."""
        swapped = [(parent, name, child) for parent in self.hf.modules()
                   for name, child in parent.named_children() if type(child) is NewGELUActivation
                   and not (child._forward_hooks or child._forward_pre_hooks)]
        for parent, name, _ in swapped:
            setattr(parent, name, ACT2FN["gelu_pytorch_tanh"])
        try:
            yield
        finally:
            for parent, name, child in swapped:
                setattr(parent, name, child)

    # ------------------------------------------------------------------ internals
    def run(self, inputs: Any, cache: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Forward pass that returns an ``ActivationCache`` (see :func:`lmxray.hooks.run_with_cache`)."""
        return run_with_cache(self, inputs, cache, **kwargs)

    def intervene(self, spec: Any) -> Any:
        """Context manager applying interventions (see :func:`lmxray.hooks.intervene`)."""
        return _intervene(self, spec)

    # ------------------------------------------------------------------ attribution
    def attribute(
        self, prompt: str | Sequence[str], target: str | Sequence[str] | None = None, **kwargs: Any
    ) -> Attribution | list[Attribution]:
        """Attribute target tokens to source tokens. See :func:`lmxray.attribution.attribute`.

        ``lmxray.attribution`` is a layer above this module, so it is looked up on first use
        (the one lazy import of this module, as :func:`lmxray.result.renderer_for` does for views).
        """
        attribute = importlib.import_module(_ATTRIBUTION_PACKAGE).attribute
        return attribute(self, prompt, target, **kwargs)


def _execution_device(module: Any) -> torch.device | None:
    """The execution device accelerate's hook gives ``module`` (None: no hook)."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
