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

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src/ src/
COPY sql/ sql/
# A regular install; the service finds its migrations in /app/sql (the working directory).
RUN pip install --no-cache-dir .

USER safetyreport
VOLUME ["/data"]
EXPOSE 8000

CMD ["safetyreport", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
