#!/usr/bin/env bash
# Jetson image entry point: (re)build the TensorRT engines of $DSOCR_BUNDLE when they are missing or
# were built for another TensorRT / GPU / set of graphs, then hand the arguments to `dsocr`.
set -euo pipefail
bundle="${DSOCR_BUNDLE:-/bundle}"
if [ -f "${bundle}/manifest.json" ]; then
    python3 -m dsocr.engines build --bundle "${bundle}" --if-stale
else
    echo "dsocr-jetson: no bundle at ${bundle} (mount one there or set DSOCR_BUNDLE); engines not built" >&2
fi
exec dsocr "$@"
