# ExplainServe's container image: `docker build -t explainserve .`
#
# Stage 1 builds the abi3 wheel (Rust core + Python server, one wheel for every Python >= 3.11)
# with maturin; stage 2 installs it with exactly the runtime part of requirements.lock (pins and
# hashes checked), builds the embedded default model into the image and runs as a non-root user.
#
# Build arguments (see README, "Container image"):
#   BASE_IMAGE   runtime base. Default: Debian 12 with Python 3.11. CUDA: the torch wheels of the
#                lock carry their CUDA libraries, so any base runs on a GPU when the NVIDIA
#                container toolkit mounts the driver (`docker run --gpus all`); a CUDA base
#                (e.g. nvidia/cuda:13.0.1-base-ubuntu24.04) adds only what the host needs to see a
#                CUDA image; its Python 3 is installed below when the base has none.
#   BUILD_IMAGE  build base: any Debian with Rust >= 1.85 in its archive (trixie: 1.85).
# Behind a TLS-inspecting proxy, hand its CA bundle to pip and cargo as a build secret (never
# stored in a layer): `docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .`
ARG BUILD_IMAGE=debian:trixie-slim
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BUILD_IMAGE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates cargo rustc python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock pyproject.toml README.md Cargo.toml Cargo.lock ./
COPY scripts/lock_subset.py scripts/
# maturin and uv at the lock's versions and hashes; the runtime part of the lock for stage 2.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 scripts/lock_subset.py requirements.lock maturin > /tmp/build.lock \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/build.lock \
    && mkdir /dist \
    && python3 scripts/lock_subset.py requirements.lock --runtime > /dist/runtime.lock
COPY native native
COPY server server
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca; fi \
    && /opt/build/bin/maturin build --release --locked --interpreter python3 --out /dist

FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
# Python 3 with venv, when the base has none (CUDA bases).
RUN if ! python3 -m venv --help > /dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid ${UID} --user-group --create-home --home-dir /home/explainserve \
        explainserve
# The dependencies first, in a layer of their own: a change of the code alone reinstalls only
# the wheel.
COPY --from=build /dist/runtime.lock /tmp/runtime.lock
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/explainserve \
    && /opt/explainserve/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps -r /tmp/runtime.lock \
    && rm /tmp/runtime.lock
COPY --from=build /dist/*.whl /tmp/dist/
RUN /opt/explainserve/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        /tmp/dist/explainserve-*.whl \
    && /opt/explainserve/bin/pip check \
    && rm -rf /tmp/dist
ENV PATH=/opt/explainserve/bin:$PATH \
    EXPLAINSERVE_CACHE_DIR=/opt/explainserve/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1
# The default model (MiniLM sentiment), built once here so a container serves in seconds and
# never writes its cache; prints the held-out accuracy into the build log.
RUN python -m explainserve.models.default_model
USER ${UID}:${UID}
WORKDIR /home/explainserve
# 50051: gRPC (ExplainService, health, reflection); 8080: HTTP/JSON (OIP v2 REST, KServe V1,
# ExplainService as JSON); 9090: Prometheus metrics.
EXPOSE 50051 8080 9090
# SERVING once the models are loaded and warmed up; NOT_SERVING while draining.
HEALTHCHECK --interval=10s --timeout=6s --start-period=120s --retries=3 \
    CMD ["python", "-m", "explainserve.probe", "--target", "127.0.0.1:50051"]
# SIGTERM drains in-flight calls for --grace-seconds (30 s); give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["explainserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--http-port", "8080", "--metrics-host", "0.0.0.0", "--metrics-port", "9090"]
