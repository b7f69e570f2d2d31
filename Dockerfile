# camelid with CUDA: build with the CUDA 13 devel image, run on the CUDA 13 runtime image.
#   docker build -t camelid .
#   docker run --gpus all -p 8000:8000 -v camelid-cache:/cache -e CAMELID_KV_CACHE_MB=24576 \
#     camelid serve --device cuda --model lmsys/vicuna-7b-v1.5
# (without CAMELID_KV_CACHE_MB a GPU's KV cache is 512 MiB: Vicuna-7B's context would be
# cut to 1 024 tokens; give it what the card leaves beside the weights.)
# The kernels are built for one GPU generation, CUDA_COMPUTE_CAP (default 90: H100/H200);
# for others build with --build-arg CUDA_COMPUTE_CAP=80 (A100), 86 (A10G, RTX 30xx) or 89
# (L4, L40S). The CUDA 13 runtime needs an NVIDIA driver 580 or newer on the host.
# The default image (FEATURES=cuda) links the driver's libcuda.so.1, which only
# `docker run --gpus …` provides: it does not start on a host without a GPU, even to serve on
# the CPU. --build-arg FEATURES= builds a CPU-only binary for such hosts; it still builds on
# and runs from the CUDA images above (their CUDA libraries then go unused).
# It runs as the unprivileged user `camelid` (uid 10001), which owns /cache: a named volume
# starts as the image's /cache; a host folder mounted there must be writable by uid 10001.
# A volume made by an earlier (root) image: once, `docker run --rm -u 0 --entrypoint chown
#   -v camelid-cache:/cache camelid -R 10001:10001 /cache`.
ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
ARG FEATURES=cuda
ARG CUDA_COMPUTE_CAP=90
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
WORKDIR /src
COPY . .
# A portable CPU baseline instead of .cargo/config.toml's target-cpu=native.
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
# crates/camelid-kernels/build.rs compiles kernels/*.cu to PTX with the image's nvcc for
# CUDA_COMPUTE_CAP (same flow as kernels/build-cuda.sh, which gets nvcc from PyPI wheels instead).
RUN cargo build --release -p camelid --features "${FEATURES}" && strip -o /camelid target/release/camelid

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
# tini as PID 1 (`docker run --init` is the same): the kernel drops signals a PID 1 has no
# handler for, and camelid installs its SIGTERM handler (drain, then exit) only once serving,
# after connecting the arena's store: before that `docker stop` would wait out its timeout.
# tini also reaps orphaned processes (pip's, which fetches the default model).
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /camelid /usr/local/bin/camelid
# Not root: the server parses what the network sends it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/camelid camelid \
    && mkdir -p /cache && chown camelid:camelid /cache
# Model cache (hub downloads and the default model) lives in a volume.
ENV CAMELID_CACHE=/cache HF_HOME=/cache/hf CAMELID_HOST=0.0.0.0 CAMELID_PORT=8000
VOLUME /cache
USER camelid
EXPOSE 8000
# Healthy once the model is loaded and the engine answers (`/health`: 503 when an engine has
# stopped); a first start may download the model, hence the long start period. Python is in
# the image already (pip fetches the default model). It asks CAMELID_PORT's port: a server
# given `--port` instead needs `docker run --health-cmd …` (or the env var) to match, and one
# listening on a single outside address (CAMELID_HOST) one that asks there. No proxy: an
# HTTP_PROXY set for downloads would take the probe elsewhere.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 CMD python3 -c \
    "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('CAMELID_PORT', '8000'), timeout=4)"
ENTRYPOINT ["/usr/bin/tini", "--", "camelid"]
CMD ["serve"]
