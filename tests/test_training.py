"""lmxray.training: the one training loop (checkpoints, exact resume, Ctrl-C / SIGTERM at step
boundaries, seeds). Zoo training and fine-tuning have their own resume tests
(tests/test_zoo.py, tests/test_improve_regularise.py); these use a toy model."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import save_file, save_model

from lmxray import io
from lmxray.errors import FormatError
from lmxray.training import (
    CHECKPOINT_FORMAT,
    Interrupted,
    load_checkpoint,
    read_state,
    remove_checkpoint,
    run_steps,
    save_checkpoint,
    step_generator,
    step_rng,
)

STEPS = 10


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    return model, opt


def _trainer(model, opt, losses, hook=None):
    def step(i: int):
        gen = step_generator(7, i)
        x = torch.randn(16, 4, generator=gen)
        y = x.sum(-1, keepdim=True) + 0.1 * torch.randn(16, 1, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if hook is not None:
            hook(i)
        return {"loss": f"{loss.item():.3f}"}

    return step


def _run(tmp_path, name: str, *, end: int = STEPS, hook=None, resume: bool = True):
    """Train (resuming from tmp_path/name when a checkpoint is there); returns (model, losses)."""
    model, opt = _setup()
    ckpt = tmp_path / name
    state = read_state(ckpt) if resume else None
    start, losses = 0, []
    if state is not None:
        state = load_checkpoint(ckpt, model, opt)
        start, losses = state["step"], list(state["losses"])

    def checkpoint(at: int) -> None:
        save_checkpoint(ckpt, model, opt, {"step": at, "losses": losses})

    run_steps(_trainer(model, opt, losses, hook), start=start, end=end, total=STEPS,
              checkpoint=checkpoint, checkpoint_every=3, checkpoint_folder=ckpt, progress=False)
    if end < STEPS:
        checkpoint(end)
    return model, losses


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_resume_gives_the_same_losses_and_weights(tmp_path):
    whole, losses = _run(tmp_path, "a")
    _run(tmp_path, "b", end=4)
    assert read_state(tmp_path / "b")["step"] == 4
    resumed, losses_b = _run(tmp_path, "b")
    assert losses_b == losses and len(losses) == STEPS
    assert _same_weights(whole, resumed)
    # a run that started over differs from neither: the same seed gives the same run
    again, losses_c = _run(tmp_path, "b", resume=False)
    assert losses_c == losses and _same_weights(whole, again)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, sig):
    whole, losses = _run(tmp_path, "a")
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    def hook(i: int) -> None:
        if i == 4:  # a signal in the middle of step 4: the step completes, then the loop stops
            os.kill(os.getpid(), sig)

    with pytest.raises(Interrupted) as info:
        _run(tmp_path, "b", hook=hook)
    assert info.value.step == 5 and info.value.checkpoint == tmp_path / "b"
    assert isinstance(info.value, KeyboardInterrupt)
    assert read_state(tmp_path / "b")["step"] == 5
    resumed, losses_b = _run(tmp_path, "b")
    assert losses_b == losses and _same_weights(whole, resumed)
    # the handlers are restored after the loop
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_checkpoint_files_format_and_permissions(tmp_path):
    model, opt = _setup()
    _trainer(model, opt, [])(0)
    folder = save_checkpoint(tmp_path / "ck", model, opt, {"step": 1, "x": float("nan")})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no .tmp / .old left
    for p in folder.iterdir():
        assert p.stat().st_mode & 0o777 == io.file_mode()
    from safetensors import safe_open

    with safe_open(str(folder / "optimizer.safetensors"), framework="pt") as fh:
        assert fh.metadata()["format"] == CHECKPOINT_FORMAT
        assert any(k.startswith("state.") for k in fh.keys())  # noqa: SIM118
    assert json.loads((folder / "state.json").read_text()) == {"step": 1, "x": None}
    # overwriting keeps one folder
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 2})
    assert read_state(tmp_path / "ck")["step"] == 2
    remove_checkpoint(tmp_path / "ck")
    assert not (tmp_path / "ck").exists() and read_state(tmp_path / "ck") is None


def test_rng_state_is_restored_when_asked(tmp_path):
    model, opt = _setup()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 0}, rng=True)
    expected = torch.rand(3)
    torch.manual_seed(999)
    load_checkpoint(tmp_path / "ck", *_setup(), rng=True)
    assert torch.equal(torch.rand(3), expected)


def test_old_checkpoints_without_format_load(tmp_path):
    """The layout written before lmxray.training (no format metadata) still resumes."""
    model, opt = _setup()
    _trainer(model, opt, [])(0)
    ck = tmp_path / "old"
    ck.mkdir()
    save_model(model, str(ck / "model.safetensors"))
    tensors = {f"state.{i}.{k}": v for i, p in enumerate(model.parameters())
               for k, v in opt.state[p].items()}
    save_file(tensors, str(ck / "optimizer.safetensors"))
    (ck / "state.json").write_text(json.dumps({"step": 1}))
    m2, o2 = _setup(seed=5)
    assert load_checkpoint(ck, m2, o2) == {"step": 1}
    assert _same_weights(model, m2)
    p0 = next(iter(m2.parameters()))
    assert torch.equal(o2.state[p0]["exp_avg"], opt.state[next(iter(model.parameters()))]["exp_avg"])


def test_foreign_files_are_refused(tmp_path):
    model, opt = _setup()
    ck = tmp_path / "ck"
    save_checkpoint(ck, model, opt, {"step": 0})
    save_file({"x": torch.zeros(1)}, str(ck / "model.safetensors"), metadata={"format": "other/1"})
    with pytest.raises(FormatError, match="not an lmxray checkpoint"):
        load_checkpoint(ck, model, opt)
    (ck / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FormatError, match="cannot read"):
        load_checkpoint(ck, model, opt)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "state.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="not a checkpoint state"):
        read_state(tmp_path / "s")


def test_step_seeds_depend_on_seed_and_step_only():
    assert torch.equal(torch.rand(3, generator=step_generator(1, 2)),
                       torch.rand(3, generator=step_generator(1, 2)))
    assert not torch.equal(torch.rand(3, generator=step_generator(1, 2)),
                           torch.rand(3, generator=step_generator(1, 3)))
    assert step_rng(4, 5).integers(0, 100, 5).tolist() == step_rng(4, 5).integers(0, 100, 5).tolist()
    assert step_rng(4, 5).integers(0, 1000, 5).tolist() != step_rng(4, 6).integers(0, 1000, 5).tolist()
