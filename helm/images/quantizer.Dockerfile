# syntax=docker/dockerfile:1
# Quantization Jobs: `python -m serving.worker.quantize SPEC` with llm-compressor. Its own
# image because vLLM and llm-compressor pin different compressed-tensors releases.
# Build from the repository root:
#   docker build -f helm/images/quantizer.Dockerfile -t quantgate/quantizer:0.1.0 .
# CPU torch, for the CPU demo:
#   docker build -f helm/images/quantizer.Dockerfile -t quantgate/quantizer-cpu:0.1.0 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyPI's Linux torch wheels are CUDA builds (the CUDA libraries come as nvidia-* wheels).
ARG TORCH_INDEX=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/quantgate
COPY requirements/quantizer.txt /tmp/quantizer.txt
# The lock is the whole environment (--no-deps) except torch: it pins the CPU build
# (torch==X+cpu). Take torch X from TORCH_INDEX with its dependencies (the CUDA libraries);
# the locked packages it also needs are installed already and stay as locked.
RUN grep -v '^torch==' /tmp/quantizer.txt > /tmp/locked.txt \
 && /opt/quantgate/bin/pip install --no-deps -r /tmp/locked.txt \
 && torch=$(sed -n 's/^torch==\([^+]*\).*/\1/p' /tmp/quantizer.txt) \
 && test -n "$torch" \
 && /opt/quantgate/bin/pip install "torch==${torch}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY serving /src/serving
RUN /opt/quantgate/bin/pip install --no-deps /src

FROM ${PYTHON_IMAGE}
# uid/gid 10001 in every Quantgate image: they share files on the cache volume.
RUN groupadd --gid 10001 quantgate \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/quantgate \
      --shell /usr/sbin/nologin quantgate
COPY --from=build /opt/quantgate /opt/quantgate
# Calibration text and checkpoints are local files: no hub, no dataset downloads (the Job
# that downloads an hf:// source sets HF_HUB_OFFLINE=0 for itself).
ENV PATH=/opt/quantgate/bin:$PATH \
    HOME=/home/quantgate \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
WORKDIR /home/quantgate
ENTRYPOINT ["python", "-m", "serving.worker.quantize"]
