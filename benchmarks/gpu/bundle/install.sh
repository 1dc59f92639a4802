# Source me on the GPU machine from the repo root: unpacks the payloads once per machine.
#   /tmp/site  : vLLM 0.26.0 and what the image lacks  -> on PYTHONPATH from here on
#   /tmp/qsite : llm-compressor 0.14 with its own compressed-tensors -> run quantization as its own
#                process with PYTHONPATH=$QUANTIZER_PYTHONPATH (never both on one path)
# Both are built on a machine with PyPI access by benchmarks/gpu/bundle/build.sh.
for p in payload:/tmp/site quantizer:/tmp/qsite; do
  name=${p%%:*}; dir=${p#*:}
  if [ ! -f "$dir/.complete" ] && [ -f ".gpu/$name.tar.xz" ]; then
    mkdir -p "$dir" && xz -dc -T0 ".gpu/$name.tar.xz" | tar -C "$dir" -xf - && touch "$dir/.complete"
  fi
done
export QUANTIZER_PYTHONPATH=/tmp/qsite
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH
# Quantgate's environments on this host: the image's python3 with the payloads above
export QUANTGATE_VLLM_PYTHON=${QUANTGATE_VLLM_PYTHON:-$(command -v python3)}
export QUANTGATE_QUANTIZER_PYTHON=${QUANTGATE_QUANTIZER_PYTHON:-$(command -v python3)}
export QUANTGATE_QUANTIZER_PYTHONPATH=${QUANTGATE_QUANTIZER_PYTHONPATH:-/tmp/qsite}
