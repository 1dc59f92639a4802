# syntax=docker/dockerfile:1
# The vLLM runner: vLLM's official OpenAI-server image, pinned, run as uid 10001 (like the
# other Quantgate images, which share the cache volume with it), offline, no usage stats.
# The chart (static mode) and the kubernetes launcher (dynamic mode) start it as
# `vllm serve MODEL_DIR --served-model-name NAME ... --tensor-parallel-size TP`.
# Build from the repository root (nothing from it is copied in):
#   docker build -f helm/images/vllm.Dockerfile -t quantgate/vllm:0.1.0 .
# CPU build, for the CPU demo: vLLM's official CPU image as the base:
#   docker build -f helm/images/vllm.Dockerfile -t quantgate/vllm-cpu:0.1.0 \
#     --build-arg VLLM_IMAGE=public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0 .
# The GPU image is v0.26.0, as requirements/vllm-cuda.txt (make install GPU=1) and every GPU
# figure in docs/benchmarks.md; the CPU one v0.32.0, as requirements/vllm.txt (vllm-cpu 0.32.0),
# what the tests here run.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.26.0
FROM ${VLLM_IMAGE}

# A passwd entry for uid 10001: torch.compile and Triton look the user up (getpass) and
# write their caches under HOME.
RUN groupadd --gid 10001 quantgate \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/quantgate \
      --shell /usr/sbin/nologin quantgate
# Models come from the cache volume, never from a hub.
ENV HOME=/home/quantgate \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /home/quantgate
EXPOSE 8000
ENTRYPOINT ["vllm", "serve"]
