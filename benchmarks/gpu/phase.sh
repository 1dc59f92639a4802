#!/bin/bash
# One phase of experiment.py on the GPU machine, what run_h100.sh and run_2gpu.sh share:
#   bash benchmarks/gpu/phase.sh PHASE [STARTED_AT]
# Writes the random-weight models while the payload unpacks, installs the wheels in .whl/,
# sets the NCCL switches, then runs the phase. STARTED_AT (epoch seconds) is when the command
# began, for the phase's own time budget.
START=${2:-$(date +%s)}
PHASE=$1
cd "$(dirname "$0")/../.." || exit 1
[ -f .gpu/install.sh ] || { echo "no .gpu/install.sh: build the bundle (benchmarks/gpu/bundle/build.sh .gpu)"; exit 1; }
# write the random-weight models (image's torch) while the payload unpacks; experiment.py waits
mkdir -p /tmp/qg/models
case "$PHASE" in
  pack) early="gptq:cuda:0 awq:cuda:1" ;;
  swap) early="gptq:cuda:0 awq:cuda:0" ;;
  *) early="bf16:cuda:0" ;;
esac
for fd in $early; do
  python3 benchmarks/gpu/make_models.py /tmp/qg/models --size 8b --formats "${fd%%:*}" \
    --device "${fd#*:}" >> /tmp/qg/make_models.log 2>&1 &
done
source .gpu/install.sh
# wheels the image and the payload lack (redis, which the gateway imports): from .whl/
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/wheels .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/wheels:$PYTHONPATH
fi
export OUT=${OUT:-/tmp/qg-out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0
export CUDA_DEVICE_ORDER=PCI_BUS_ID
export PYTHONUNBUFFERED=1
echo "payload ready after $(( $(date +%s) - START )) s"
if [ "$PHASE" = swap ]; then  # swapping: swap.py's own steps (ONLY=swap|recold: a part)
  python3 benchmarks/gpu/swap.py --work /tmp/qg --out "$OUT" --started-at "$START" \
    ${ONLY:+--only "$ONLY"} ${SWITCHES:+--switches "$SWITCHES"} ${TOKENS:+--tokens "$TOKENS"} \
    ${WARM:+--warm} ${BUDGET_S:+--budget-s "$BUDGET_S"}
else
  python3 benchmarks/gpu/experiment.py "$PHASE" --work /tmp/qg --out "$OUT" --started-at "$START" \
    ${PIN:+--pin "$PIN"} ${OPTIMIZE_FOR:+--optimize-for "$OPTIMIZE_FOR"} ${BUDGET_S:+--budget-s "$BUDGET_S"}
fi
rc=$?
cat "$OUT/table.md" 2>/dev/null
exit $rc
