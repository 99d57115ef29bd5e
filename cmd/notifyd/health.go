package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

type healthCmd struct {
	MetricsAddr string        `name:"metrics-addr" env:"NOTIFYD_METRICS_ADDR" default:"${metrics_addr}" help:"The --metrics-addr of the notifyd to ask; a wildcard host (0.0.0.0, ::, empty) is asked on the loopback."`
	Timeout     time.Duration `name:"timeout" default:"3s" help:"Longest the check may take."`

	// out receives the report; nil means standard output.
	out io.Writer `kong:"-"`
}

func (healthCmd) Help() string {
	return `Asks a running notifyd's /readyz and exits 0 when it is ready, 1 when it is
not (with the reason it gives) or does not answer. For container health
checks, which have no curl: it reads the same NOTIFYD_METRICS_ADDR as
'notifyd run'.

Examples:
  notifyd health
  notifyd health --metrics-addr 127.0.0.1:9464 --timeout 1s`
}

func (c *healthCmd) validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout: must be more than 0, got %s", c.Timeout))
	}
	if _, err := readyzURL(c.MetricsAddr); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *healthCmd) Run(ctx context.Context) error {
	url, err := readyzURL(c.MetricsAddr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	text := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, text)
	}
	out := c.out
	if out == nil {
		out = os.Stdout
	}
	fmt.Fprintln(out, text)
	return nil
}

// readyzURL is the /readyz URL of a notifyd listening on addr.
func readyzURL(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("--metrics-addr: empty; the notifyd to ask serves no /readyz")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-addr: %q: want host:port: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz", nil
}
