package broker

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestEmbeddedBrokerCreatesTopicsAndKeepsDataAcrossRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir, port := t.TempDir(), freePort(t)
	cfg := Config{Port: port, DataDir: dir, Topics: []string{"notifications", "notifications.dlq"}, Partitions: 3}

	emb, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := emb.Addrs()[0], net.JoinHostPort("127.0.0.1", itoa(port)); got != want {
		t.Fatalf("addr: got %s, want %s", got, want)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(emb.Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	details, err := kadm.NewClient(cl).ListTopics(ctx, "notifications", "notifications.dlq")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"notifications", "notifications.dlq"} {
		if got := len(details[name].Partitions); got != 3 {
			t.Fatalf("topic %s: got %d partitions, want 3", name, got)
		}
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "notifications", Value: []byte("kept")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	emb.Close()

	emb, err = Start(cfg)
	if err != nil {
		t.Fatalf("restart on the same data dir: %v", err)
	}
	defer emb.Close()
	cl, err = kgo.NewClient(kgo.SeedBrokers(emb.Addrs()...), kgo.ConsumeTopics("notifications"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []string
	for len(got) == 0 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if len(got) != 1 || got[0] != "kept" {
		t.Fatalf("records after restart: got %q, want [kept]", got)
	}
	// A topic the persisted state does not have yet is created on demand.
	if err := EnsureTopics(ctx, kadm.NewClient(cl), 3, "notifications", "other.dlq"); err != nil {
		t.Fatalf("ensure topics: %v", err)
	}
	details, err = kadm.NewClient(cl).ListTopics(ctx, "other.dlq")
	if err != nil || len(details["other.dlq"].Partitions) != 3 {
		t.Fatalf("other.dlq: got %v (err %v), want 3 partitions", details["other.dlq"].Partitions, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
