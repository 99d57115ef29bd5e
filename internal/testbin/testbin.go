// Package testbin builds the notifyd binary for tests that run it as a
// child process, as a user would.
package testbin

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime/debug"
)

// Build compiles notifyd into dir and returns the binary's path. The
// binary gets the race detector when the calling test binary has it, so
// that a race in the service is reported on the child's stderr; ldflags,
// if any, are passed on.
func Build(dir, ldflags string) (string, error) {
	bin := filepath.Join(dir, "notifyd")
	args := []string{"build", "-o", bin}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	if RaceEnabled() {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "github.com/notifyd/notifyd/cmd/notifyd")...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// RaceEnabled reports whether the running binary was built with -race.
func RaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}
