package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// Token mints an HS256 token for user, valid for ttl from now: what the
// user-facing service would issue, and what `notifyd token` prints for
// development.
func Token(secret []byte, user uuid.UUID, ttl time.Duration, now time.Time) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("token lifetime must be positive, got %s", ttl)
	}
	claims := jwt.RegisteredClaims{
		Subject:   user.String(),
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// authError is why a request's token was refused; its text is for the client.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// authenticate returns the user of the request's bearer token. The
// algorithm is pinned to HS256 (so neither "none" nor an asymmetric
// algorithm keyed with the secret passes), exp is required and sub must be
// a UUID.
func (s *Server) authenticate(r *http.Request) (uuid.UUID, error) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" {
		return uuid.Nil, &authError{"missing Authorization header: send Authorization: Bearer <token>"}
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return uuid.Nil, &authError{"the Authorization header must be: Bearer <token>"}
	}
	var claims jwt.RegisteredClaims
	_, err := s.parser.ParseWithClaims(strings.TrimSpace(tok), &claims, func(*jwt.Token) (any, error) {
		return s.cfg.Secret, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return uuid.Nil, &authError{"the token has expired"}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return uuid.Nil, &authError{"the token has no exp claim; tokens must expire"}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return uuid.Nil, &authError{"the token is not signed with HS256 by this server's secret"}
	case err != nil:
		return uuid.Nil, &authError{"the token is not valid: " + err.Error()}
	}
	user, err := uuid.Parse(claims.Subject)
	if err != nil || !strings.EqualFold(claims.Subject, user.String()) {
		return uuid.Nil, &authError{"the token's sub claim must be the user's UUID"}
	}
	return user, nil
}

func newParser(now func() time.Time) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(now),
		jwt.WithLeeway(5*time.Second),
	)
}
