# The workflow-analytics image: the `wfa` command (exporter, API, simulator).
# docker-compose.yml runs it as `wfa exporter`, `wfa api` and `wfa simulate --live`.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY monitoring ./monitoring
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/wfa --create-home wfa \
    && mkdir -p /var/lib/wfa/exports \
    && chown -R wfa:wfa /var/lib/wfa

USER wfa
WORKDIR /var/lib/wfa
ENV WFA_CONFIG=/etc/wfa/config.yaml
EXPOSE 9464 8080
ENTRYPOINT ["wfa"]
CMD ["run"]
