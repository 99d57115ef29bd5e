# notifyd: a static binary on a distroless base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /notifyd ./cmd/notifyd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /notifyd /notifyd
# /metrics, /healthz, /readyz
EXPOSE 9464
ENV NOTIFYD_METRICS_ADDR=0.0.0.0:9464
ENTRYPOINT ["/notifyd"]
CMD ["run"]
