#!/usr/bin/env bash
# The test command: install what is missing, then run the whole suite.
#
#   bash scripts/test.sh                 # the full suite (< 30 min on 2 cores; starts the phone)
#   bash scripts/test.sh --fast          # the fast subset (~13 min): no phone, no training,
#                                        #   nothing over ~20 s, i.e.
#                                        #   pytest -m "not slow and not phone and not training"
#   bash scripts/test.sh -k precision    # any other arguments go to pytest
#
# Markers (pyproject.toml): phone = emulated arm64 phone / QEMU / RPC, slow = > ~20 s,
# training = trains a network. On a shared machine, wrap it: flock /tmp/mdl_heavy.lock bash ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
for arg in "$@"; do
    if [[ "$arg" == "--fast" ]]; then
        args+=(-m "not slow and not phone and not training")
    else
        args+=("$arg")
    fi
done
# --durations: the slowest tests are in every log, to keep the suite inside its budget
exec "${PYTHON:-python3}" -m pytest -q --durations=25 tests "${args[@]+"${args[@]}"}"
