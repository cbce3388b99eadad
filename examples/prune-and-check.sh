#!/bin/sh
# Prune a model through the Secateurs service and fail when accuracy drops more than a threshold: the step a
# pipeline runs on every push. Plain POSIX shell; needs the `secateurs` command (pip install secateurs) and
# python3 (which it brings) to read the report.
#
#   examples/prune-and-check.sh MODEL EVAL.npz [MAX_DROP]
#
#   MODEL      the model: IN.onnx, or your module as file.py:factory (set INPUT_SHAPE and WEIGHTS; it is
#              exported to ONNX on this machine first, which needs pip install 'secateurs[convert]')
#   EVAL.npz   labelled evaluation data: x (inputs as the model takes them), y (class labels)
#   MAX_DROP   the largest accuracy drop allowed, as a fraction: 0.01 = one point (default 0.01)
#
# Environment: SECATEURS_URL and SECATEURS_API_KEY (or ~/.config/secateurs/config.toml); SIGNAL (l2_norm),
# TARGET (macs=0.5), RECOVER (none), CALIB (calibration .npz, needed by data-driven signals and recovery),
# OUT (pruned.onnx), REPORT (report.json), SECATEURS (the command; default secateurs).
#
# Exit codes: 0 pruned and within the threshold, 1 accuracy dropped too much (or the report has no
# accuracy), otherwise the client's own: 2 bad input, 3 job failed, 4 cancelled, 5 service unreachable.
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 MODEL EVAL.npz [MAX_DROP]" >&2
    exit 2
fi
MODEL=$1
EVAL=$2
MAX_DROP=${3:-0.01}
SECATEURS=${SECATEURS:-secateurs}
OUT=${OUT:-pruned.onnx}
REPORT=${REPORT:-report.json}
PYTHON=${PYTHON:-python3}

set -- "$MODEL" --eval "$EVAL" --signal "${SIGNAL:-l2_norm}" --target "${TARGET:-macs=0.5}" \
    --recover "${RECOVER:-none}" --wait -o "$OUT" --report "$REPORT" --json
if [ -n "${CALIB:-}" ]; then set -- "$@" --calib "$CALIB"; fi
if [ -n "${INPUT_SHAPE:-}" ]; then set -- "$@" --input-shape "$INPUT_SHAPE"; fi
if [ -n "${WEIGHTS:-}" ]; then set -- "$@" --weights "$WEIGHTS"; fi

# --json: the finished job on stdout; the progress and any error on stderr, as the CI log shows them
code=0
job=$($SECATEURS submit "$@") || code=$?
if [ "$code" -ne 0 ]; then
    echo "prune-and-check: secateurs submit exited $code" >&2
    exit "$code"
fi
echo "$job" | "$PYTHON" -c 'import json, sys; j = json.load(sys.stdin); print("job", j["id"], j["status"])'

"$PYTHON" - "$REPORT" "$MAX_DROP" <<'PY'
import json
import sys

report, max_drop = json.load(open(sys.argv[1])), float(sys.argv[2])
print(f"MACs {report['macs_kept'] * 100:.1f}% kept, latency {report['latency_ms_before']:.3f} -> "
      f"{report['latency_ms_after']:.3f} ms")
if "accuracy_after" not in report:
    sys.exit("prune-and-check: the report has no accuracy: give labelled evaluation data (x and y)")
drop = report["accuracy_before"] - report["accuracy_after"]
line = (f"accuracy {report['accuracy_before'] * 100:.2f}% -> {report['accuracy_after'] * 100:.2f}% "
        f"(drop {drop * 100:.2f} points, allowed {max_drop * 100:.2f})")
if drop > max_drop:
    sys.exit(f"prune-and-check: FAILED: {line}")
print(f"prune-and-check: passed: {line}")
PY
