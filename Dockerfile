# dsen2cr in a container: the package with all its extras, the bundled sample (so `dsen2cr demo` runs inside),
# a non-root user, `dsen2cr` as the entry point. `make image` builds it (buildah where docker is absent) and
# `make image-test` runs it on the bundled scene.
#
# CPU (default):  docker build -t dsen2cr:cpu .
# GPU (CUDA):     docker build -t dsen2cr:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                     --build-arg TORCH_SPEC=torch==2.13.0 .        # run with --gpus all (NVIDIA container toolkit)
# A Debian base of your own (no registry): --build-arg BASE=localhost/debian:bookworm-min
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# PyTorch's CPU wheels by default; the index of a CUDA build for GPUs. wheels/ in the build context (may be
# empty) is searched first: `make image` puts a local wheel there on machines without that index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0+cpu

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/dsen2cr
ENV PATH=/opt/dsen2cr/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# wheels/pip-ca.crt, when present: the certificate bundle of a proxy between this build and the package index
COPY wheels/ /tmp/wheels/
RUN if [ -f /tmp/wheels/pip-ca.crt ]; then export PIP_CERT=/tmp/wheels/pip-ca.crt; fi \
    && pip install --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

COPY pyproject.toml README.md LICENSE* /tmp/dsen2cr/
COPY src /tmp/dsen2cr/src
RUN if [ -f /tmp/wheels/pip-ca.crt ]; then export PIP_CERT=/tmp/wheels/pip-ca.crt; fi \
    && pip install "/tmp/dsen2cr[train,onnx,masks,weights,pc]" \
    && rm -rf /tmp/dsen2cr /tmp/wheels

RUN useradd --create-home --shell /usr/sbin/nologin dsen2cr
USER dsen2cr
WORKDIR /home/dsen2cr
ENTRYPOINT ["dsen2cr"]
CMD ["--help"]
