package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/notifyd/notifyd/internal/pgtest"
)

// selfSigned makes a CA-less server certificate for 127.0.0.1 and writes
// it as the CA file a client trusts.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, ca
}

// TestRunOverTLSWithSCRAM consumes from a cluster that requires TLS and
// SASL/SCRAM-SHA-256.
func TestRunOverTLSWithSCRAM(t *testing.T) {
	t.Parallel()
	cert, caFile := selfSigned(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "notifications", "notifications.dlq"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "notifyd", "s3cret-pass"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	url := pgtest.Schema(t)

	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(caFile)
	pool.AppendCertsFromPEM(pemBytes)
	prod, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("notifications"),
		kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		kgo.SASL(scram.Auth{User: "notifyd", Pass: "s3cret-pass"}.AsSha256Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runCommand(ctx, nil, "run", "--brokers", c.ListenAddrs()[0], "--database-url", url,
			"--metrics-addr", "", "--log-level", "warn", "--group", "tls",
			"--tls-ca-file", caFile, "--sasl-mechanism", "scram-sha-256", "--sasl-username", "notifyd", "--sasl-password", "s3cret-pass")
	}()
	id := uuid.NewString()
	value := []byte(`{"id":"` + id + `","user_id":"` + uuid.NewString() + `","event_type":"secure.test","title":"over TLS","body":"and SCRAM"}`)
	if err := prod.ProduceSync(ctx, &kgo.Record{Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	st, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	waitUntil(t, 30*time.Second, func() (bool, string) {
		var n int
		err := st.QueryRow(ctx, "SELECT count(*) FROM notifications WHERE id = $1 AND title = 'over TLS'", id).Scan(&n)
		if err != nil {
			return false, err.Error()
		}
		return n == 1, "the row did not arrive"
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: got %v, want nil", err)
	}
}

func TestKafkaAuthSettingsAreChecked(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name  string
		flags kafkaAuthFlags
		want  string // "" means valid
	}{
		{"none", kafkaAuthFlags{}, ""},
		{"scram complete", kafkaAuthFlags{SASLMechanism: "scram-sha-512", SASLUsername: "u", SASLPassword: "p"}, ""},
		{"mechanism without password", kafkaAuthFlags{SASLMechanism: "plain", SASLUsername: "u"}, "--sasl-username and --sasl-password"},
		{"user without mechanism", kafkaAuthFlags{SASLUsername: "u", SASLPassword: "p"}, "--sasl-mechanism"},
		{"cert without key", kafkaAuthFlags{TLSCertFile: missing}, "--tls-cert-file and --tls-key-file"},
		{"missing CA file", kafkaAuthFlags{TLSCAFile: missing}, "--tls-ca-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.flags.validate()
			switch {
			case tc.want == "" && len(errs) > 0:
				t.Fatalf("got %v, want no error", errs)
			case tc.want != "" && (len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want)):
				t.Fatalf("got %v, want an error naming %s", errs, tc.want)
			}
		})
	}
	args, env := (&kafkaAuthFlags{TLS: true, SASLMechanism: "plain", SASLUsername: "u", SASLPassword: "secret"}).childArgs()
	if strings.Contains(strings.Join(args, " "), "secret") {
		t.Fatalf("child args %q carry the password; it belongs in the environment", args)
	}
	if len(env) != 1 || env[0] != "NOTIFYD_SASL_PASSWORD=secret" {
		t.Fatalf("child env: got %q, want [NOTIFYD_SASL_PASSWORD=secret]", env)
	}
}
