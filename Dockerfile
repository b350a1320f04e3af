# syntax=docker/dockerfile:1
# raysisa on the official Ray image of the Ray version that pyproject.toml pins
# (ray[default,train,tune]==2.60.0) and of its Python (requires-python 3.11): Ray and Python
# must match on every node of a cluster, and the KubeRay manifests in k8s/ run this image.
#
#   docker build -t raysisa:0.1.0 .                                   # rayproject/ray:2.60.0-py311
#   docker build --build-arg RAY_VARIANT=-gpu -t raysisa:0.1.0-gpu .  # rayproject/ray:2.60.0-py311-gpu
#   docker run --rm raysisa:0.1.0 raysisa --help
#
# The plain image runs on GPU nodes too (the pinned torch wheel brings its own CUDA runtime);
# the -gpu variant adds the CUDA toolkit of Ray's GPU images. Keep RAY_VERSION equal to the
# pin: the build fails if pip would have to change Ray (tests/unit/test_k8s_manifests.py checks it).
ARG RAY_VERSION=2.60.0
ARG RAY_VARIANT=
FROM rayproject/ray:${RAY_VERSION}-py311${RAY_VARIANT}

ARG RAY_VERSION
# No usage reports from a cluster (Ray's own switch); pip leaves no cache in the layer.
ENV RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The Ray image's non-root user `ray` (uid 1000, group users = 100); the manifests run as it.
USER 1000:100
WORKDIR /home/ray/raysisa-src

# Installed like README.md installs it, from the project's own metadata, so every dependency
# pin comes from pyproject.toml. Only what the wheel needs is copied (see .dockerignore).
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 raysisa/ raysisa/
RUN pip install --no-cache-dir . \
 && python -c "import ray, sys; sys.exit(0 if ray.__version__ == '${RAY_VERSION}' else 'pip changed Ray to ' + ray.__version__)" \
 && raysisa --version

# Run from the home folder, not the source copy, so `python -m raysisa` imports the installed package.
WORKDIR /home/ray
# No ENTRYPOINT (Ray's image has none, and KubeRay sets each container's command), so
# `docker run IMAGE raysisa --help` and `docker run IMAGE python -m raysisa train ...` work as typed.
CMD ["raysisa", "--help"]
