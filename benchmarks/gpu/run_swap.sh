#!/bin/bash
# Swapping on one GPU, through Quantgate: two 8B-shape W4A16 variants that
# cannot both be awake take turns by vLLM's sleep mode; then a restart shows the compile cache.
#   bash benchmarks/gpu/run_swap.sh              cold starts, 24 switches, warm-cache restart (~9 min)
#   ONLY=swap bash benchmarks/gpu/run_swap.sh    without the restart;  ONLY=recold: only it
# Needs .gpu/ (bash benchmarks/gpu/bundle/build.sh .gpu) and .whl/ (docs/benchmarks.md) in the
# checkout. Writes $OUT/results.json, table.md, logs.tar.gz. Nothing is installed from the network.
START=$(date +%s)
exec bash "$(dirname "$0")/phase.sh" swap "$START"
