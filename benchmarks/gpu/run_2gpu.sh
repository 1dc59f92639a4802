#!/bin/bash
# Issue 10 on a 2-GPU machine (nvidia-h100-x2), through Quantgate: one phase per call,
# each under 9.5 minutes and rebuilding what it needs when /tmp is empty.
#   bash benchmarks/gpu/run_2gpu.sh tp     8B bf16 with tensor parallel 2, then on 1 GPU (~6.8 min)
#   bash benchmarks/gpu/run_2gpu.sh pack   two W4A16 models, one per GPU, both served at once (~4.7 min)
# Needs .gpu/ (bash ../shared/gpu/build_payload.sh .gpu) and .whl/ (docs/benchmarks.md) carried along. Writes $OUT/results.json,
# table.md, logs.tar.gz. Nothing is installed from the network.
START=$(date +%s)
PHASE=${1:-tp}
case "$PHASE" in tp|pack) ;; *) echo "usage: $0 tp|pack"; exit 2 ;; esac
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
