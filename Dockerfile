# hep-ingest: one image for every command (`receive`, `consume`, `migrate`, ...).
# Multi-stage: the build stage compiles and installs the package into a virtual
# environment (and fails if the compiled per-packet module was not built); the runtime
# stage copies only that environment and the data files, and runs as a non-root user.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the compiled per-packet module (pipeline/_speedups.pyx; the image
# has the Python headers). Only this stage has it: the runtime stage gets the built
# module with the virtual environment.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/hep-ingest
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
RUN /opt/hep-ingest/bin/pip install . \
    && /opt/hep-ingest/bin/hep-ingest --version | grep -q "per-packet code: compiled"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 hep \
    && useradd --system --uid 10001 --gid hep --no-create-home --shell /usr/sbin/nologin hep
COPY --from=build /opt/hep-ingest /opt/hep-ingest
COPY schemas /opt/hep-ingest/share/schemas
COPY migrations /opt/hep-ingest/share/migrations
ENV PATH=/opt/hep-ingest/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEP_INGEST_SCHEMAS_DIR=/opt/hep-ingest/share/schemas \
    HEP_INGEST_MIGRATIONS_DIR=/opt/hep-ingest/share/migrations
USER 10001:10001
WORKDIR /tmp
EXPOSE 9060/udp 9060/tcp 9100/tcp
ENTRYPOINT ["hep-ingest"]
CMD ["--help"]
