#!/usr/bin/env bash
# Create the peer environments used by benchmarks/run.py, reproducibly and idempotently.
#
#   bash benchmarks/setup_peers.sh [captum|interpreto|tlens|model|all]...   (default: all)
#
# Everything goes under benchmarks/.peers/ (git-ignored):
#   venv-captum      Python 3.11, torch 2.13.0+cpu, transformers 4.57.6, captum 0.9.0, inseq 0.7.1
#                    (exact pins from benchmarks/requirements-peers.txt, --no-deps) + lmxray editable
#   venv-interpreto  torch 2.13.0+cpu, interpreto 0.5.2 (pulls transformers 5.x, nnsight, ...)
#                    + lmxray editable; exact pins in locks/venv-interpreto.txt
#   venv-tlens       torch 2.13.0+cpu, transformer-lens 4.3.0 (TransformerBridge) + lmxray
#                    editable; exact pins in locks/venv-tlens.txt
#                    (RESOLVE=1 re-resolves the top-level pins and rewrites the lock)
#   model/           the bench GPT-2 built by shared/bench/build_bench_model.py
# A venv is rebuilt only when its stamp (hash of Python version, torch pin and its requirements
# or lock file) is missing or stale; set FORCE=1 to rebuild anyway. Install logs: benchmarks/.peers/logs/.
#
# torch is always pinned to the local CPU wheel (torch==2.13.0+cpu): an unpinned torch from
# PyPI pulls several GB of CUDA wheels. Override with TORCH_SPEC=... if you know what you do.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PEERS="$HERE/.peers"
LOGS="$PEERS/logs"
PY="${PYTHON:-python3.11}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
SHARED_BENCH="${SHARED_BENCH:-$REPO/../shared/bench}"
[ -d "$SHARED_BENCH" ] || SHARED_BENCH=/work/shared/bench
INTERPRETO_VERSION="${INTERPRETO_VERSION:-0.5.2}"
TLENS_SPEC="${TLENS_SPEC:-transformer-lens==4.3.0}"
LMXRAY_DEPS="numpy safetensors rich jinja2 typer matplotlib scikit-learn tqdm"
mkdir -p "$PEERS" "$LOGS"

stamp_of() {  # stamp_of VENV: hash of what defines that env (not of this whole script)
  local spec
  case "$1" in
    venv-captum) spec="$(cat "$HERE/requirements-peers.txt")" ;;
    venv-interpreto) spec="interpreto==$INTERPRETO_VERSION $(cat "$HERE/locks/venv-interpreto.txt" 2>/dev/null)" ;;
    venv-tlens) spec="$TLENS_SPEC $(cat "$HERE/locks/venv-tlens.txt" 2>/dev/null)" ;;
  esac
  printf '%s\n%s\n%s\n%s\n' "$("$PY" -V 2>&1)" "$TORCH_SPEC" "$LMXRAY_DEPS" "$spec" \
    | sha256sum | cut -c1-16
}

fresh_venv() {  # fresh_venv NAME -> 0 if it must be (re)built
  local dir="$PEERS/$1"
  STAMP="$(stamp_of "$1")"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$STAMP" ]; then
    echo "[$1] up to date ($dir)"; return 1
  fi
  rm -rf "$dir"
  : > "$LOGS/$1.log"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
  return 0
}

pipi() {  # pipi VENV LOGNAME args...
  local venv="$1" log="$LOGS/$2.log"; shift 2
  echo "  pip install $*" | tee -a "$log"
  if ! "$PEERS/$venv/bin/python" -m pip install "$@" >>"$log" 2>&1; then
    echo "  FAILED (see $log):"; tail -n 15 "$log"; return 1
  fi
}

lmxray_editable() {  # lmxray from this checkout, without letting pip touch torch/transformers
  local venv="$1"
  pipi "$venv" "$venv" --no-deps -e "$REPO"
}

setup_captum() {
  fresh_venv venv-captum || return 0
  echo "[venv-captum] exact pins from requirements-peers.txt (--no-deps)"
  # inseq 0.7.1 declares CUDA-11 packages behind a platform marker -> --no-deps for all,
  # the pinned list is the complete closure.
  pipi venv-captum venv-captum --no-deps -r "$HERE/requirements-peers.txt"
  lmxray_editable venv-captum
  "$PEERS/venv-captum/bin/python" -m pip check >>"$LOGS/venv-captum.log" 2>&1 \
    || echo "  pip check reported problems (see $LOGS/venv-captum.log)"
  "$PEERS/venv-captum/bin/python" - <<'PY'
import importlib.metadata as md
import captum, inseq, torch, transformers
print(f"  torch {torch.__version__} transformers {transformers.__version__} "
      f"captum {captum.__version__} inseq {md.version('inseq')}")
PY
  echo "$STAMP" > "$PEERS/venv-captum/.stamp"
}

install_locked_or_resolve() {  # VENV TOP-LEVEL-SPEC...
  # With benchmarks/locks/VENV.txt (pip freeze of the env that was measured): exact install,
  # --no-deps. Without it, or with RESOLVE=1: let pip resolve the top-level pins (torch held by a
  # constraint) and write a fresh lock.
  local venv="$1"; shift
  local lock="$HERE/locks/$venv.txt" cons="$PEERS/$venv/constraints.txt"
  echo "$TORCH_SPEC" > "$cons"          # keep pip from swapping torch for a CUDA build
  pipi "$venv" "$venv" "$TORCH_SPEC"
  if [ -f "$lock" ] && [ "${RESOLVE:-0}" != 1 ]; then
    echo "  exact pins from locks/$venv.txt (--no-deps)"
    pipi "$venv" "$venv" --no-deps -r "$lock"
  else
    pipi "$venv" "$venv" -c "$cons" "$@"
    pipi "$venv" "$venv" -c "$cons" $LMXRAY_DEPS
    mkdir -p "$HERE/locks"
    "$PEERS/$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^lmxray' > "$lock"
    echo "  wrote locks/$venv.txt"
  fi
  lmxray_editable "$venv"
  "$PEERS/$venv/bin/python" -m pip check >>"$LOGS/$venv.log" 2>&1 \
    || echo "  pip check reported problems (see $LOGS/$venv.log)"
}

setup_interpreto() {
  fresh_venv venv-interpreto || return 0
  echo "[venv-interpreto] $TORCH_SPEC, then interpreto==$INTERPRETO_VERSION"
  install_locked_or_resolve venv-interpreto "interpreto==$INTERPRETO_VERSION"
  "$PEERS/venv-interpreto/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers
print(f"  torch {torch.__version__} transformers {transformers.__version__} "
      f"interpreto {md.version('interpreto')} nnsight {md.version('nnsight')}")
PY
  echo "$STAMP" > "$PEERS/venv-interpreto/.stamp"
}

setup_tlens() {
  fresh_venv venv-tlens || return 0
  echo "[venv-tlens] $TORCH_SPEC, then $TLENS_SPEC"
  install_locked_or_resolve venv-tlens "$TLENS_SPEC"
  "$PEERS/venv-tlens/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers
from transformer_lens.model_bridge import TransformerBridge  # noqa: F401  (4.x API)
print(f"  torch {torch.__version__} transformers {transformers.__version__} "
      f"transformer-lens {md.version('transformer-lens')}")
PY
  echo "$STAMP" > "$PEERS/venv-tlens/.stamp"
}

setup_model() {
  local out="$PEERS/model" py="$PEERS/venv-captum/bin/python"
  [ -x "$py" ] || { echo "[model] needs venv-captum first"; return 1; }
  if [ "${FORCE:-0}" != 1 ] && [ -f "$out/fingerprint.json" ] && [ -f "$out/model.safetensors" ]; then
    echo "[model] present ($out)"; cat "$out/fingerprint.json"; echo; return 0
  fi
  echo "[model] building with $SHARED_BENCH/build_bench_model.py (venv-captum)"
  rm -rf "$out"
  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "$py" "$SHARED_BENCH/build_bench_model.py" "$out" \
    > "$LOGS/model.log" 2>&1 || { tail -n 20 "$LOGS/model.log"; return 1; }
  cat "$out/fingerprint.json"; echo
  if [ -f "$HERE/model_fingerprint.json" ]; then
    "$py" - "$out/fingerprint.json" "$HERE/model_fingerprint.json" <<'PY'
import json, sys
got, want = (json.load(open(p)) for p in sys.argv[1:3])
keys = ("n_params", "state_dict_sha256", "tokenizer_json_sha256")
bad = [k for k in keys if got.get(k) != want.get(k)]
print("  fingerprint matches benchmarks/model_fingerprint.json" if not bad
      else f"  WARNING: fingerprint differs from benchmarks/model_fingerprint.json in {bad}")
PY
  fi
}

targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(all)
status=0
for t in "${targets[@]}"; do
  case "$t" in
    captum) setup_captum || status=1 ;;
    interpreto) setup_interpreto || status=1 ;;
    tlens) setup_tlens || status=1 ;;
    model) setup_model || status=1 ;;
    all) for f in setup_captum setup_model setup_interpreto setup_tlens; do $f || status=1; done ;;
    *) echo "unknown target $t (captum|interpreto|tlens|model|all)"; exit 2 ;;
  esac
done
exit $status
