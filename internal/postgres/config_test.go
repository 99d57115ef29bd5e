package postgres

import (
	"strings"
	"testing"
)

// TestConfigValidateGivesTheCauseWithoutThePassword checks that each way a
// connection string can be wrong is told apart, and that no message repeats
// the password.
func TestConfigValidateGivesTheCauseWithoutThePassword(t *testing.T) {
	const pw = "S3cretPassw0rd"
	for _, tt := range []struct {
		url  string
		want string
	}{
		{"postgres://app:" + pw + "@127.0.0.1:notaport/app", "invalid port"},
		{"postgres://app:" + pw + "@127.0.0.1:99999/app", "invalid port"},
		{"host=127.0.0.1 password=" + pw + " port=x", "invalid port"},
		{"postgres://app:" + pw + "%zz@h/app", "percent-encoded token in password"},
		{"postgres://app:" + pw + "@h/%zz", "percent-encoded"},
		{"host=h password='" + pw, "unterminated quoted string"},
		{"postgres://app:" + pw + "@h/app?sslmode=bogus", "sslmode is invalid"},
		{"postgres://app:" + pw + "@h/app?connect_timeout=soon", "invalid connect_timeout"},
		{"mysql://app:" + pw + "@h/app", "keyword/value"},
	} {
		err := Config{URL: tt.url}.Validate()
		if err == nil {
			t.Errorf("%s: got no error, want one", tt.url)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "--database-url: ") || !strings.Contains(msg, tt.want) {
			t.Errorf("%s: got %q, want it to start with --database-url and give the cause %q", tt.url, msg, tt.want)
		}
		if strings.Contains(msg, pw) {
			t.Errorf("%s: the message repeats the password: %q", tt.url, msg)
		}
	}
}

func TestConfigValidateNamesThePoolSize(t *testing.T) {
	err := Config{MaxConns: -1}.Validate()
	if err == nil || !strings.Contains(err.Error(), "--db-max-conns") {
		t.Fatalf("got %v, want an error naming --db-max-conns", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero Config: got %v, want nil", err)
	}
}
