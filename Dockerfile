# A pgjobs worker image: `docker compose up` runs it on the demo tasks.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgjobs ./pgjobs
COPY sql ./sql
RUN pip install --no-cache-dir '.[binary]'
ENTRYPOINT ["pgjobs"]
CMD ["worker", "pgjobs.demo"]
