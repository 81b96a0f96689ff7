"""Bad input for dataset jobs (``attribute-dataset``, ``--ray`` / ``--ray-address`` /
``--workers`` of ``evaluate`` and ``trace``) and for ``lmxray.load(device_map=...)``: one line
(exit 2 on the CLI), nothing written, no Ray cluster started."""

from __future__ import annotations

import functools
import json
import sys

import pytest

import lmxray
from badinput import ApiCase, CliCase, run_api_case, run_cli_case
from conftest import build_tiny
from lmxray import cli
from lmxray.errors import InputError
from lmxray.jobs import InProcess, ModelSpec, RayExecutor, attribute_dataset, check_address
from lmxray.model import check_device_map

NOBODY = "127.0.0.1:9"  # nothing listens on the discard port
GOOD = b'{"prompt": "The capital of France is", "target": " Paris"}\n'


def _write(name: str, data: bytes):
    def setup(tmp):
        (tmp / name).write_bytes(data)

    return setup


def _rows(name: str, *rows: object):
    return _write(name, "".join(json.dumps(r) + "\n" for r in rows).encode())


AD = ["attribute-dataset", "{tmp}/rows.jsonl", "--out", "{tmp}/out.jsonl"]
ROWS = _write("rows.jsonl", GOOD)
OTHER_RUN = b'{"kind": "header", "format": "lmxray.attribution-rows/1", "config": {"method": "saliency"}}\n'

CLI_CASES: list[CliCase] = [
    CliCase("ad-missing-data", AD, "no dataset file at", outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-data-is-a-folder", ["attribute-dataset", "{tmp}", "--out", "{tmp}/o.jsonl"], "folder",
            outputs=["{tmp}/o.jsonl"]),
    CliCase("ad-data-not-utf8", AD, "UTF-8", setup=_write("rows.jsonl", b"\xff\xfe{}\n"), outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-data-not-json", AD, "line 1", setup=_write("rows.jsonl", b"{nope\n"), outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-data-empty", AD, "holds no dataset rows", setup=_write("rows.jsonl", b""), outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-row-without-prompt", AD, "row 1 has no prompt", setup=_rows("rows.jsonl", {"target": " x"}),
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-empty-prompt", AD, "row 2 has no prompt", setup=_rows("rows.jsonl", {"prompt": "a"}, {"prompt": " "}),
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-target-not-text", AD, "target that is not", setup=_rows("rows.jsonl", {"prompt": "a", "target": 3}),
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-empty-target", AD, "target that is not", setup=_rows("rows.jsonl", {"prompt": "a", "target": ""}),
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-out-suffix", ["attribute-dataset", "{tmp}/rows.jsonl", "--out", "{tmp}/out.csv"],
            "*.jsonl or *.parquet", setup=ROWS, outputs=["{tmp}/out.csv"]),
    CliCase("ad-out-is-a-folder", ["attribute-dataset", "{tmp}/rows.jsonl", "--out", "{tmp}/d.jsonl"],
            "is a directory", setup=lambda t: (ROWS(t), (t / "d.jsonl").mkdir())),
    CliCase("ad-out-no-such-folder", ["attribute-dataset", "{tmp}/rows.jsonl", "--out", "{tmp}/no/o.jsonl"],
            "does not exist", setup=ROWS, outputs=["{tmp}/no/o.jsonl"]),
    CliCase("ad-missing-out", ["attribute-dataset", "{tmp}/rows.jsonl"], "Missing option", setup=ROWS),
    CliCase("ad-unknown-method", [*AD, "--method", "nope"], "unknown method", setup=ROWS, outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-ig-steps-other-method", [*AD, "--method", "saliency", "--ig-steps", "4"], "--ig-steps applies",
            setup=ROWS, outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-zero-ig-steps", [*AD, "--ig-steps", "0"], "--ig-steps", setup=ROWS),
    CliCase("ad-zero-batch", [*AD, "--batch-size", "0"], "--batch-size", setup=ROWS),
    CliCase("ad-workers-without-ray", [*AD, "--workers", "2"], "--workers needs --ray", setup=ROWS,
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-zero-workers", [*AD, "--ray", "--workers", "0"], "--workers", setup=ROWS),
    CliCase("ad-ray-address-unreachable", [*AD, "--ray-address", NOBODY], "no Ray cluster answers at",
            setup=ROWS, outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-ray-address-not-host-port", [*AD, "--ray-address", "nohost"], "is not host:port", setup=ROWS,
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-ray-address-bad-port", [*AD, "--ray-address", "localhost:99999"], "is not host:port",
            setup=ROWS, outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-ray-address-empty", [*AD, "--ray-address", ""], "--ray-address is empty", setup=ROWS,
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-missing-model", [*AD, "--model", "./no/such/model"], "does not exist", setup=ROWS,
            outputs=["{tmp}/out.jsonl"]),
    CliCase("ad-out-of-another-run", AD, "written by another run",
            setup=lambda t: (ROWS(t), (t / "out.jsonl").write_bytes(OTHER_RUN))),
    CliCase("ad-out-not-rows-file", AD, "is not an attribution-rows file",
            setup=lambda t: (ROWS(t), (t / "out.jsonl").write_bytes(b'{"a": 1}\n'))),
    CliCase("evaluate-ray-address-unreachable", ["evaluate", "--task", "facts", "--n", "2", "--out",
                                                 "{tmp}/e.jsonl", "--ray-address", NOBODY],
            "no Ray cluster answers at", outputs=["{tmp}/e.jsonl"]),
    CliCase("evaluate-workers-without-ray", ["evaluate", "--task", "facts", "--out", "{tmp}/e.jsonl",
                                             "--workers", "2"], "--workers needs --ray", outputs=["{tmp}/e.jsonl"]),
    CliCase("trace-ray-without-zoo-facts", ["trace", "The capital of France is", "--subject", "France", "--ray"],
            "apply to --zoo-facts runs only"),
    CliCase("trace-ray-address-unreachable", ["trace", "--zoo-facts", "1", "--ray-address", NOBODY,
                                              "--checkpoint", "{tmp}/ck.jsonl"], "no Ray cluster answers at",
            outputs=["{tmp}/ck.jsonl"]),
]


@functools.lru_cache(maxsize=1)
def _tiny():
    hf, tok = build_tiny("gpt2")
    return lmxray.load(model=hf, tokenizer=tok)


ROW = [{"prompt": "The capital of France is", "target": " Paris"}]

API_CASES: list[ApiCase] = [
    ApiCase("device-map-unknown", lambda t: lmxray.load(device_map="fastest"), "unknown device_map"),
    ApiCase("device-map-empty", lambda t: lmxray.load(device_map=""), "device_map is empty"),
    ApiCase("device-map-number", lambda t: lmxray.load(device_map=1.5), "unknown device_map"),
    ApiCase("device-map-only-disk", lambda t: lmxray.load(device_map="disk"), "nothing to compute on"),
    ApiCase("device-map-missing-gpu", lambda t: check_device_map("cuda:7", None, {}), "GPU this machine does not"),
    ApiCase("device-map-bad-value", lambda t: lmxray.load(device_map={"transformer.h.0": "gpu7"}), "is not a device"),
    ApiCase("device-map-bad-key", lambda t: lmxray.load(device_map={0: "cpu"}), "module names"),
    ApiCase("device-map-empty-dict", lambda t: lmxray.load(device_map={}), "empty dict"),
    ApiCase("device-map-disk-no-folder", lambda t: lmxray.load(device_map={"": "cpu", "lm_head": "disk"}),
            "offload_folder"),
    ApiCase("device-map-and-device", lambda t: lmxray.load(device_map="auto", device="cpu"),
            "either device= or device_map="),
    ApiCase("device-map-in-memory-model", lambda t: lmxray.load(model=_tiny().hf, tokenizer=_tiny().tokenizer,
                                                                device_map="auto"), "model passed in memory"),
    ApiCase("device-map-unknown-module", lambda t: lmxray.load(device_map={"no.such.module": "cpu"}),
            "modules the model does not have: no.such.module"),
    ApiCase("ray-workers-zero", lambda t: RayExecutor(ModelSpec(), workers=0), "workers must be"),
    ApiCase("ray-window-zero", lambda t: RayExecutor(ModelSpec(), window=0), "window must be"),
    ApiCase("ray-address-unreachable", lambda t: check_address(NOBODY), "no Ray cluster answers"),
    ApiCase("ray-address-no-port", lambda t: check_address("10.0.0.5"), "is not host:port"),
    ApiCase("in-process-not-a-model", lambda t: InProcess("lmxray-tiny"), "needs an lmxray Model"),
    ApiCase("ad-no-rows", lambda t: attribute_dataset(_tiny(), []), "no rows"),
    ApiCase("ad-zero-batch-api", lambda t: attribute_dataset(_tiny(), ROW, batch_size=0), "batch_size"),
    ApiCase("ad-bool-batch", lambda t: attribute_dataset(_tiny(), ROW, batch_size=True), "batch_size"),
    ApiCase("ad-bad-suffix", lambda t: attribute_dataset(_tiny(), ROW, out=t / "a.csv"), "*.jsonl or *.parquet",
            outputs=["{tmp}/a.csv"]),
    ApiCase("ad-unknown-param", lambda t: attribute_dataset(_tiny(), ROW, params={"nope": 1}), "does not take"),
    ApiCase("ad-unknown-method-api", lambda t: attribute_dataset(_tiny(), ROW, method="nope"), "unknown method"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case, tmp_path):
    run_cli_case(case, tmp_path)


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case, tmp_path):
    run_api_case(case, tmp_path)


def test_ray_not_installed_is_one_line(monkeypatch, tmp_path):
    """``--ray`` without Ray installed (hidden here): one line saying how to install it."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'lmxray\[ray\]'"):
        RayExecutor(ModelSpec(), workers=1)
    (tmp_path / "rows.jsonl").write_bytes(GOOD)
    from typer.testing import CliRunner

    res = CliRunner().invoke(cli.app, ["attribute-dataset", str(tmp_path / "rows.jsonl"), "--out",
                                       str(tmp_path / "o.jsonl"), "--ray"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "lmxray: error: Ray is not installed; install it with: pip install 'lmxray[ray]' (or run without --ray)"]
    assert not (tmp_path / "o.jsonl").exists()
