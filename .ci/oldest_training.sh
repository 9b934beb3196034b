#!/usr/bin/env bash
# Install Likeness's training stack at the lowest versions pyproject's `train` and `test` extras
# declare, and run the training tests there.
#
#   .ci/oldest_training.sh [VENV] [TEST_FILE ...]
#
# VENV (default .venv-oldest-training, relative to the repository root) is created afresh. The pins
# are the lower bounds of pyproject's extras (diffusers 0.28, transformers 4.35.2, peft 0.13, safetensors
# 0.4, pytest 7.4, jsonschema 4.17, pathspec 0.11) plus what those old releases need from their own dependencies,
# which they do not bound themselves:
#   numpy 1.26.2       A1111's numpy; wheels of that era are built against numpy 1.x
#   huggingface-hub<0.26  diffusers 0.28 imports `cached_download`, removed in huggingface-hub 0.26
# Why these floors (each found by a failing test one release lower):
#   diffusers 0.28     a single-file base (what `likeness run --base x.safetensors` loads) needs
#                      from_single_file(config=<local folder>); 0.27 fetches the original config from GitHub
#   transformers 4.35.2  diffusers loads LoRAs (its PEFT backend, the tests' independent reference) only
#                      from transformers 4.34 on, and 4.34.x / 4.35.0-1 need tokenizers 0.14, which caps
#                      huggingface-hub below 0.18 while diffusers needs 0.20.2 (pip finds no solution)
#   peft 0.13          the sweep's switch to a LoRA of another rank matches diffusers' own result with
#                      peft 0.13.2, not with 0.7.0 or 0.10.0 (test_a_lora_of_another_rank_gets_fresh_layers)
# They go through a constraints file so that `pip install -e .[test]` cannot lift them. torch is
# installed first as torch==2.13.0 (the CPU build on this machine; the hosts own torch).
# Without TEST_FILEs it runs tests/test_training.py and tests/test_adherence.py. test_sweep.py and
# test_convert.py write their diffusers-format fixtures with save_lora_weights(unet_lora_adapter_metadata=...)
# and read them with lora_state_dict(return_lora_metadata=True), which diffusers 0.28 does not have
# (Likeness itself uses neither): they run on the newest stack only (.ci/run's README command 2).
# PYTHON picks the interpreter for the venv (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${1:-.venv-oldest-training}"
shift || true
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/test_training.py tests/test_adherence.py)
python="${PYTHON:-python3}"
start=$SECONDS

"$python" -m venv --clear "$venv"
py="$venv/bin/python"
[ -x "$py" ] || py="$venv/Scripts/python.exe"  # Windows layout

constraints="$venv/oldest-training-constraints.txt"
cat > "$constraints" <<'EOF'
torch==2.13.0
diffusers==0.28.0
transformers==4.35.2
peft==0.13.2
safetensors==0.4.0
pytest==7.4.0
jsonschema==4.17.3
pathspec==0.11.0
numpy==1.26.2
huggingface-hub<0.26
EOF

pip_install() { "$py" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"; }
pip_install torch==2.13.0
pip_install -e ".[test]"

"$py" .ci/versions.py "oldest training stack, $venv"
echo "== install took $((SECONDS - start)) s"
"$py" -m pip check --disable-pip-version-check

# The declared lower bounds must be what was installed: a bound raised in pyproject without this
# file following (or the other way round) would test something else than we claim.
"$py" - "$constraints" <<'EOF'
import sys
from lora_likeness import dependencies

pins = {}
for line in open(sys.argv[1], encoding="utf-8"):
    requirement = dependencies.parse_requirement(line)
    if requirement.specifier.startswith("=="):
        pins[requirement.key] = requirement.specifier[2:]
wrong = []
for extra in ("train", "test"):
    for _, requirement in dependencies.extra_requirements(extra):
        floor = next((c[2:] for c in requirement.specifier.split(",") if c.startswith(">=")), None)
        pinned = pins.get(requirement.key)
        if floor is None:
            continue
        if pinned is None:
            wrong.append(f"{requirement.name}: declared {requirement.specifier} but not pinned here")
            continue
        floor_release = dependencies.parse_version(floor).release  # 4.30 -> (4, 30): 4.30.2 is that floor
        if dependencies.parse_version(pinned).release[:len(floor_release)] != floor_release:
            wrong.append(f"{requirement.name}: pinned {pinned}, declared {requirement.specifier}")
findings = dependencies.extra_findings(("train", "test"))
if wrong or findings:
    sys.exit("oldest training pins do not match pyproject's lower bounds: " + "; ".join(wrong + [f.message() for f in findings]))
print("== the pins are pyproject's lower bounds")
EOF

status=0
"$py" -m pytest -q -p no:cacheprovider "${tests[@]}" || status=$?
echo "== oldest training stack: done in $((SECONDS - start)) s"
exit $status
