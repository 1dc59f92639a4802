# syntax=docker/dockerfile:1
# The gateway: `quantgate serve`. Slim on purpose: no torch, no vLLM; those run in their own
# pods (vllm.Dockerfile, quantizer.Dockerfile). Build from the repository root:
#   docker build -f helm/images/gateway.Dockerfile -t quantgate/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/quantgate
# The lock is the whole environment (--no-deps); its layer is reused while it is unchanged.
COPY requirements/main.txt /tmp/main.txt
RUN /opt/quantgate/bin/pip install --no-deps -r /tmp/main.txt
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY serving /src/serving
RUN /opt/quantgate/bin/pip install --no-deps /src

FROM ${PYTHON_IMAGE}
# uid/gid 10001 in every Quantgate image: they share files on the cache volume.
RUN groupadd --gid 10001 quantgate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin quantgate
COPY --from=build /opt/quantgate /opt/quantgate
ENV PATH=/opt/quantgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["quantgate"]
CMD ["serve", "/etc/quantgate/manifest.yaml", "--host", "0.0.0.0", "--port", "8000"]
