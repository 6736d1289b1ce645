FROM python:3.11-slim
WORKDIR /opt/facelake
COPY pyproject.toml README.md ./
COPY facelake facelake
COPY assets assets
COPY resources resources
COPY dagster_project dagster_project
COPY synthetic synthetic
COPY sql sql
COPY deploy deploy
COPY workspace.yaml ./
ENV FACELAKE_SQL_DIR=/opt/facelake/sql
RUN pip install --no-cache-dir .
