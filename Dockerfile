# syntax=docker/dockerfile:1
# The order processing example as a small runtime image: one binary, five services.

FROM rust:1.85-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-processing-example \
    && cp target/release/order-processing /usr/local/bin/order-processing

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /usr/local/bin/order-processing /usr/local/bin/order-processing
USER app
# Bind every interface inside the container; publish ports from compose or `docker run -p`.
ENV HOST=0.0.0.0
EXPOSE 5001 5002 5003 5004 5005
ENTRYPOINT ["order-processing"]
CMD ["all"]
