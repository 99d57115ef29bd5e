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
