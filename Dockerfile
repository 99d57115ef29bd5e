# notifyd: a static binary on a distroless base, run as the image's nonroot
# user (65532). Build with the version stamped in:
#   docker build --build-arg VERSION=$(git describe --tags --always) -t notifyd .
# (make image does this.)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /notifyd ./cmd/notifyd
# The embedded broker's data directory, owned by the user notifyd runs as:
# the base image has no shell to make it later.
RUN mkdir -p /out/var/lib/notifyd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /notifyd /notifyd
COPY --from=build --chown=65532:65532 /out/var/lib/notifyd /var/lib/notifyd
WORKDIR /var/lib/notifyd
# /metrics, /healthz, /readyz. (The embedded broker, used when no
# --brokers is given, listens on the container's loopback only.)
EXPOSE 9464
ENV NOTIFYD_METRICS_ADDR=0.0.0.0:9464 \
    NOTIFYD_DATA_DIR=/var/lib/notifyd
VOLUME ["/var/lib/notifyd"]
# notifyd health asks /readyz on NOTIFYD_METRICS_ADDR (the image has no curl).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/notifyd", "health"]
ENTRYPOINT ["/notifyd"]
CMD ["run"]
