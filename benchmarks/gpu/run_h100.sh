#!/bin/bash
# Issue 9 on H100s, through Quantgate: one phase per call, each under 9.5 minutes and
# rebuilding what it needs when /tmp is empty. Estimates from ../shared/gpu/README.md's numbers,
# on 1 GPU / on 2 GPUs (the tuner then starts both kernels at once, on a GPU each):
#   bash benchmarks/gpu/run_h100.sh gptq   8B bf16 -> GPTQ job -> kernel tuning -> tuned launch
#                                          -> 1/16/64 streams, direct and via gateway  (~8.5 / ~6.5 min)
#   bash benchmarks/gpu/run_h100.sh awq    the same for AWQ                            (~8.7 / ~6.7 min)
#   bash benchmarks/gpu/run_h100.sh bf16   the bf16 base variant                       (~3.5 min)
# PIN=MarlinLinearKernel pins the kernel (no tuning: one vLLM start instead of two).
# Needs .gpu/ (bash ../shared/gpu/build_payload.sh .gpu) and .whl/ (docs/benchmarks.md) carried along. Writes $OUT/results.json,
# table.md, logs.tar.gz. Nothing is installed from the network.
START=$(date +%s)
PHASE=${1:-gptq}
case "$PHASE" in gptq|awq|bf16) ;; *) echo "usage: $0 gptq|awq|bf16"; exit 2 ;; esac
cd "$(dirname "$0")/../.." || exit 1
[ -f .gpu/install.sh ] || { echo "no .gpu/install.sh: build the payload and carry .gpu"; exit 1; }
# write the random-weight models (image's torch) while the payload unpacks; experiment.py waits
mkdir -p /tmp/qg/models
case "$PHASE" in
  pack) early="gptq:cuda:0 awq:cuda:1" ;;
  *) early="bf16:cuda:0" ;;
esac
for fd in $early; do
  python3 benchmarks/gpu/make_models.py /tmp/qg/models --size 8b --formats "${fd%%:*}" \
    --device "${fd#*:}" >> /tmp/qg/make_models.log 2>&1 &
done
source .gpu/install.sh
# wheels the image and the payload lack (redis, which the gateway imports): carried in .whl/
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
python3 benchmarks/gpu/experiment.py "$PHASE" --work /tmp/qg --out "$OUT" --started-at "$START" \
  ${PIN:+--pin "$PIN"} ${BUDGET_S:+--budget-s "$BUDGET_S"}
rc=$?
cat "$OUT/table.md" 2>/dev/null
exit $rc
