package notification

import (
	"errors"
	"fmt"
)

// Default limits, from SPEC section 1.
const (
	DefaultMaxEventTypeBytes = 64
	DefaultMaxTitleChars     = 256
	DefaultMaxBodyChars      = 4096
	DefaultMaxDataBytes      = 16 << 10
)

// Limits bounds the size of a notification's fields. The zero value means the
// defaults, and so does each zero field.
type Limits struct {
	// MaxEventTypeBytes bounds event_type, in bytes. Default 64.
	MaxEventTypeBytes int
	// MaxTitleChars bounds title, in characters (code points). Default 256.
	MaxTitleChars int
	// MaxBodyChars bounds body, in characters (code points). Default 4096.
	MaxBodyChars int
	// MaxDataBytes bounds data, in bytes of JSON as sent, from its '{' to
	// its '}'. Default 16384 (16 KiB).
	MaxDataBytes int
}

// Validate reports every negative field, naming it by its command-line flag. Decode itself uses the
// default for any field that is not positive, so it never rejects a whole
// topic because of a bad setting; call Validate at start-up instead.
func (l Limits) Validate() error {
	var errs []error
	check := func(flag string, v int) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("--%s: must be at least 1, got %d", flag, v))
		}
	}
	check("max-event-type-bytes", l.MaxEventTypeBytes)
	check("max-title-chars", l.MaxTitleChars)
	check("max-body-chars", l.MaxBodyChars)
	check("max-data-bytes", l.MaxDataBytes)
	return errors.Join(errs...)
}

// withDefaults returns l with every field that is not positive set to its
// default.
func (l Limits) withDefaults() Limits {
	def := func(v, d int) int {
		if v <= 0 {
			return d
		}
		return v
	}
	return Limits{
		MaxEventTypeBytes: def(l.MaxEventTypeBytes, DefaultMaxEventTypeBytes),
		MaxTitleChars:     def(l.MaxTitleChars, DefaultMaxTitleChars),
		MaxBodyChars:      def(l.MaxBodyChars, DefaultMaxBodyChars),
		MaxDataBytes:      def(l.MaxDataBytes, DefaultMaxDataBytes),
	}
}
