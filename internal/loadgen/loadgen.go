// Package loadgen makes realistic synthetic notifications, valid and
// deliberately invalid, for demos, benchmarks and tests.
package loadgen

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Kinds of invalid message Generator can make, by the class notifyd will
// reject them with.
const (
	InvalidDecode   = "decode"
	InvalidValidate = "validate"
)

// Generator makes notifications. It is not safe for concurrent use.
type Generator struct {
	rng   *rand.Rand
	users []uuid.UUID
	// InvalidShare is the fraction (0..1) of messages made invalid, half
	// failing to decode and half failing validation.
	InvalidShare float64
}

// New returns a generator with users distinct recipients, seeded for
// reproducible output.
func New(seed uint64, users int) *Generator {
	if users <= 0 {
		users = 10_000
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	g := &Generator{rng: rng, users: make([]uuid.UUID, users)}
	for i := range g.users {
		var b [16]byte
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		b[6] = b[6]&0x0f | 0x40
		b[8] = b[8]&0x3f | 0x80
		g.users[i] = b
	}
	return g
}

// NewFor returns a generator, seeded like New, whose messages all go to
// users (at least one).
func NewFor(seed uint64, users []uuid.UUID) *Generator {
	g := New(seed, 1)
	g.users = append([]uuid.UUID(nil), users...)
	return g
}

var (
	eventTypes = []string{"comment.created", "comment.reply", "mention", "follow.new", "order:shipped",
		"order:delivered", "invoice.paid", "security.login_new_device", "friend-request", "system.maintenance"}
	words = []string{"your", "order", "has", "shipped", "new", "comment", "on", "post", "welcome", "back",
		"reply", "from", "Anna", "José", "Zoë", "Łukasz", "张伟", "Παναγιώτης", "review", "ready", "🎉", "✓",
		"invoice", "paid", "thanks", "login", "device", "Berlin", "São Paulo", "東京", "today", "update"}
)

func (g *Generator) words(minChars, maxChars int) string {
	target := minChars + g.rng.IntN(maxChars-minChars+1)
	var sb strings.Builder
	for n := 0; n < target; {
		if sb.Len() > 0 {
			sb.WriteByte(' ')
			n++
		}
		w := words[g.rng.IntN(len(words))]
		sb.WriteString(w)
		n += len([]rune(w))
	}
	return sb.String()
}

type message struct {
	ID        string         `json:"id,omitempty"`
	UserID    string         `json:"user_id"`
	EventType string         `json:"event_type"`
	Title     string         `json:"title"`
	Body      string         `json:"body"`
	Data      map[string]any `json:"data,omitempty"`
	CreatedAt string         `json:"created_at,omitempty"`
}

// Next returns the next message's value and, for an invalid one, the class
// notifyd should reject it with ("" for a valid message).
func (g *Generator) Next() (value []byte, invalid string) {
	m := message{
		ID:        uuid.Must(uuid.NewRandomFromReader(g)).String(),
		UserID:    g.users[g.rng.IntN(len(g.users))].String(),
		EventType: eventTypes[g.rng.IntN(len(eventTypes))],
		Title:     g.words(8, 70),
		Body:      g.words(20, 500),
	}
	if g.rng.IntN(10) < 8 {
		m.CreatedAt = time.Now().UTC().Format(time.RFC3339Nano)
	}
	if g.rng.IntN(2) == 0 {
		m.Data = map[string]any{
			"url":      fmt.Sprintf("https://example.com/p/%d", g.rng.IntN(1_000_000)),
			"actor_id": g.users[g.rng.IntN(len(g.users))].String(),
			"count":    g.rng.IntN(100),
		}
	}
	if g.InvalidShare > 0 && g.rng.Float64() < g.InvalidShare {
		if g.rng.IntN(2) == 0 {
			return g.undecodable(m), InvalidDecode
		}
		return g.invalid(m), InvalidValidate
	}
	v, _ := json.Marshal(m)
	return v, ""
}

func (g *Generator) undecodable(m message) []byte {
	v, _ := json.Marshal(m)
	switch g.rng.IntN(3) {
	case 0:
		return v[:len(v)/2] // truncated JSON
	case 1:
		return append(v[:len(v)-1:len(v)-1], []byte(",\"title_bad\":\"\xff\xfe\"}")...) // not UTF-8
	default:
		return []byte(`["not", "an", "object"]`)
	}
}

func (g *Generator) invalid(m message) []byte {
	switch g.rng.IntN(4) {
	case 0:
		m.UserID = "not-a-uuid"
	case 1:
		m.EventType = "has spaces!"
	case 2:
		m.Title = strings.Repeat("x", 300)
	default:
		m.Title = ""
	}
	v, _ := json.Marshal(m)
	return v
}

// Read fills p with pseudo-random bytes, so that ids are reproducible.
func (g *Generator) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(g.rng.UintN(256))
	}
	return len(p), nil
}
