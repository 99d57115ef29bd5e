package main

import (
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md from the code")

func TestConfigurationReferenceMatchesFlags(t *testing.T) {
	got, err := settingsReference()
	if err != nil {
		t.Fatal(err)
	}
	const path = "../../docs/configuration.md"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v (run with -update to create it)", path, err)
	}
	if string(want) != got {
		t.Fatalf("%s is out of date with the flags; run: go test ./cmd/notifyd -run TestConfigurationReference -update", path)
	}
}

// TestServiceSettingsHaveEnvironmentVariables holds the reference's
// promise: every setting of the commands a deployment configures (run,
// migrate, health) can come from the environment.
func TestServiceSettingsHaveEnvironmentVariables(t *testing.T) {
	var c cli
	k, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, n := range k.Model.Children {
		switch n.Name {
		case "run", "migrate":
		case "health":
			// --timeout is the health check's own, set where it is called.
		default:
			continue
		}
		seen++
		for _, f := range n.Flags {
			if len(f.Envs) == 0 && !(n.Name == "health" && f.Name == "timeout") {
				t.Errorf("notifyd %s --%s: got no environment variable, want one", n.Name, f.Name)
			}
		}
	}
	if seen != 3 {
		t.Fatalf("found %d of the commands run, migrate and health", seen)
	}
}
