# Build stage: the project's wheel, built with the locked build backend. The wheel carries
# the migrations (pyproject.toml maps the top-level sql/ to safetyreport/sql).
FROM python:3.12-slim AS wheel

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY requirements/build.txt requirements/build.txt
RUN pip install --no-cache-dir --require-hashes --requirement requirements/build.txt
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sql/ sql/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# The service: the locked runtime dependencies, then the wheel. No source tree, no
# development tools and no embedded PostgreSQL (the `embedded` extra): the image always
# has DATABASE_URL.
FROM python:3.12-slim

# SAFETYREPORT_DATA_DIR: the default (.safetyreport under the working directory) would
# not be writable by the unprivileged user; /data is (and is a volume).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAFETYREPORT_DATA_DIR=/data

# Unprivileged user. /data is created owned by it so a fresh named volume inherits that.
RUN groupadd --system --gid 10001 safetyreport \
    && useradd --system --uid 10001 --gid safetyreport --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin safetyreport \
    && mkdir /data \
    && chown safetyreport:safetyreport /data

COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes --requirement /tmp/runtime.txt \
    && rm /tmp/runtime.txt
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

WORKDIR /data
USER safetyreport
VOLUME ["/data"]
EXPOSE 8000

CMD ["safetyreport", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
