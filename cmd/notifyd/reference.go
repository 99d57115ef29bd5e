package main

import (
	"fmt"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"
)

// settingsReference renders every command's flags, environment variables
// and defaults as Markdown, from the same model that parses them; the test
// suite checks docs/configuration.md against it so that the two cannot
// drift.
func settingsReference() (string, error) {
	var c cli
	k, err := newParser(&c)
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	sb.WriteString("# Configuration reference\n\n")
	sb.WriteString("Generated from the command-line model by `go test ./cmd/notifyd -run TestConfigurationReference -update`;\n")
	sb.WriteString("a test fails when this file and the code disagree. A flag with an environment variable\n")
	sb.WriteString("can also be set by it, and a flag given on the command line wins. Every setting of `run`\n")
	sb.WriteString("and `migrate` has one (a test checks it); flags shown with — have none: they choose what\n")
	sb.WriteString("one command does (how much `produce` sends, which dead letters `dlq show` prints), not\n")
	sb.WriteString("how a deployment is configured. Durations take Go syntax (`250ms`, `5s`, `1m30s`). A bad\n")
	sb.WriteString("value stops notifyd at start with a message naming the flag (exit code 2, see the end).\n")
	sb.WriteString("A flag marked *not 0* refuses 0: its default is shown, and 0 would only mean that default.\n")
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, child := range n.Children {
			if child.Type != kong.CommandNode {
				continue
			}
			flags := child.Flags
			if len(flags) > 0 {
				fmt.Fprintf(&sb, "\n## `notifyd %s`\n\n%s\n\n", child.Path(), child.Help)
				sb.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
				for _, f := range flags {
					env := "—"
					if len(f.Envs) > 0 {
						env = "`" + strings.Join(f.Envs, "`, then `") + "`"
					}
					def := f.Default
					switch {
					case def == "":
						def = "—"
					default:
						def = "`" + def + "`"
					}
					help := strings.ReplaceAll(f.Help, "|", "\\|")
					if f.Tag.Has("nonzero") {
						help += " *Not 0.*"
					}
					fmt.Fprintf(&sb, "| `--%s` | %s | %s | %s |\n", f.Name, env, def, help)
				}
			}
			walk(child)
		}
	}
	walk(k.Model.Node)
	fmt.Fprintf(&sb, `
## Exit codes

| code | meaning |
|---|---|
| 0 | the command did its work; for `+"`run`"+`, a clean stop after SIGINT or SIGTERM |
| %d | a runtime failure: a dependency failed or could not be reached (the message says which) |
| %d | a bad setting, flag or command: nothing was started (the message names the flag) |
| %d + signal | a second SIGINT or SIGTERM during shutdown: exited at once without finishing it (%d for SIGINT, %d for SIGTERM) |
`, exitFailure, exitUsage, exitSignalBase, exitSignalBase+int(syscall.SIGINT), exitSignalBase+int(syscall.SIGTERM))
	return sb.String(), nil
}
