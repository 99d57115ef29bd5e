package api

import (
	"bufio"
	"io"
	"strings"
)

// Event is one event of the live stream as a client reads it. A comment
// line (the heartbeat) comes as an Event with only Comment set.
type Event struct {
	ID, Name, Data string
	Comment        string
}

// ReadEvents reads the events of a stream response from r, in the form
// the stream writes them (one line each of id, event and data, a blank
// line after each event), and calls fn for each until r ends or fn
// returns an error, which it returns.
func ReadEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 1<<20)
	var ev Event
	for sc.Scan() {
		l := sc.Text()
		switch {
		case l == "":
			if ev.Name != "" {
				if err := fn(ev); err != nil {
					return err
				}
			}
			ev = Event{}
		case strings.HasPrefix(l, ":"):
			if err := fn(Event{Comment: l}); err != nil {
				return err
			}
		case strings.HasPrefix(l, "id: "):
			ev.ID = l[4:]
		case strings.HasPrefix(l, "event: "):
			ev.Name = l[7:]
		case strings.HasPrefix(l, "data: "):
			ev.Data = l[6:]
		}
	}
	return sc.Err()
}
