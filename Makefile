# notifyd — see README.md.
GO        ?= go
BIN       := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
BENCHSTAT_VERSION   := v0.0.0-20260908200009-22c9c6c9d4da
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

.PHONY: build run test test-short lint bench bench-writepath fuzz clean postgres

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/notifyd ./cmd/notifyd

# Runs notifyd on its embedded defaults: the embedded broker on
# 127.0.0.1:9092 and the local PostgreSQL.
run: postgres
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/notifyd run

# The whole suite, against the real local PostgreSQL, with the race detector.
test: postgres
	$(GO) test -race -count=1 -timeout 15m ./...

test-short: postgres
	$(GO) test -short -count=1 ./...

postgres:
	@scripts/ensure-postgres

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(BIN)/benchstat:
	GOBIN=$(BIN) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

lint: $(BIN)/staticcheck
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# Go benchmarks of decode, batching and the write path, 5 runs each, for
# benchstat (compare two runs: benchstat old.txt bench.txt); then the
# end-to-end benchmark.
bench: postgres build $(BIN)/benchstat
	$(GO) test -run '^$$' -bench 'Decode|Batch|StoreWrite' -benchmem -count 5 ./... | tee bench.txt
	$(BIN)/benchstat bench.txt
	$(BIN)/notifyd bench

# The comparison of bulk write methods that chose the write path (slow).
bench-writepath: postgres
	$(GO) test -run '^$$' -bench 'WritePathInterleaved' -benchtime 20s ./internal/postgres

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./internal/notification

clean:
	rm -rf $(BIN) notifyd-data bench.txt
