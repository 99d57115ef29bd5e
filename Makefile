# notifyd — see README.md.
GO        ?= go
BIN       := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
BENCHSTAT_VERSION   := v0.0.0-20260908200009-22c9c6c9d4da
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

.PHONY: build run test test-short lint bench bench-writepath fuzz clean postgres image

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/notifyd ./cmd/notifyd

# Runs notifyd on its embedded defaults: the embedded broker on
# 127.0.0.1:9092 and the local PostgreSQL, with the inbox API and its demo
# page on $(API_ADDR), for which it prints the address and a development
# token; more flags in RUN_ARGS. It runs the built binary itself (exec, not
# go run), so that Ctrl-C reaches only notifyd's clean shutdown and make has
# no error to report.
RUN_ARGS   ?=
API_ADDR   ?= 127.0.0.1:8080
DEV_SECRET ?= notifyd-development-secret
DEV_USER   ?= 6f1c2a4e-8d3b-4c1a-9e2f-0b7d5a3c9e11
run: postgres
	@echo "compiling notifyd into bin/ (the first build compiles every dependency: a minute or two)" >&2
	@$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/notifyd ./cmd/notifyd
	@echo "Inbox demo page: http://$(API_ADDR)/#token=$$($(BIN)/notifyd token --user $(DEV_USER) --api-secret $(DEV_SECRET) --ttl 24h)"
	@echo "Send $(DEV_USER) a notification, from another terminal: bin/notifyd produce --count 1 --user $(DEV_USER)"
	@exec $(BIN)/notifyd run --api-addr $(API_ADDR) --api-secret $(DEV_SECRET) $(RUN_ARGS)

# The whole suite, against the real local PostgreSQL, with the race
# detector; then the decoder's reference check against JSON v2, which needs
# GOEXPERIMENT=jsonv2.
test: postgres
	@scripts/ensure-tools test
	$(GO) test -race -count=1 -timeout 15m ./...
	GOEXPERIMENT=jsonv2 $(GO) test -count=1 -run 'Reference|JSONText' $(FUZZPKG)

test-short: postgres
	$(GO) test -short -count=1 ./...

postgres:
	@scripts/ensure-postgres

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(BIN)/benchstat:
	GOBIN=$(BIN) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

# Go vet, staticcheck and gofmt; then the alert rules (promtool test rules),
# the dashboard's queries, and the compose file where docker compose exists.
lint: $(BIN)/staticcheck
	@scripts/ensure-tools lint
	$(GO) vet ./...
	GOEXPERIMENT=jsonv2 $(GO) vet $(FUZZPKG)
	$(BIN)/staticcheck ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	scripts/check-monitoring
	scripts/check-compose

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

# Each fuzz target of the decoder for FUZZTIME (go test fuzzes one target
# at a time). The targets of the JSON v2 reference check are built with
# GOEXPERIMENT=jsonv2; the others without it.
FUZZTIME ?= 60s
FUZZPKG  := ./internal/notification
fuzz:
	@set -e; plain=$$($(GO) test -list '^Fuzz' $(FUZZPKG) | grep '^Fuzz' | tr '\n' ' '); \
	v2=$$(GOEXPERIMENT=jsonv2 $(GO) test -list '^Fuzz' $(FUZZPKG) | grep '^Fuzz'); \
	for f in $$plain; do echo "fuzzing $$f for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $(FUZZPKG); done; \
	for f in $$v2; do case " $$plain " in *" $$f "*) continue;; esac; \
	  echo "fuzzing $$f for $(FUZZTIME) (GOEXPERIMENT=jsonv2)"; \
	  GOEXPERIMENT=jsonv2 $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $(FUZZPKG); done

# The container image, with the version stamped in (needs a Docker engine).
image:
	docker build --build-arg VERSION=$(VERSION) -t notifyd:$(VERSION) .

clean:
	rm -rf $(BIN) notifyd-data bench.txt
