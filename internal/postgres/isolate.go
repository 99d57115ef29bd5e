package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/notifyd/notifyd/internal/notification"
)

// insertEach inserts rows through notifyd_insert_each (migration 0004):
// each row in a subtransaction of its own on the server, as insertSQL
// would, so that the rows the database refuses are found in one round trip
// whatever their number. It returns them, and adds what it inserted to res.
func insertEach(ctx context.Context, tx *pgx.Conn, rows []notification.Notification, res *Result) ([]Rejected, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	out, err := tx.Query(ctx, `SELECT idx, inserted, state, message FROM notifyd_insert_each($1, $2, $3, $4, $5, $6, $7)`,
		columnArrays(rows)...)
	if err != nil {
		return nil, err
	}
	res.Statements++
	var bad []Rejected
	var idx *int32
	var inserted *int64
	var state, message *string
	_, err = pgx.ForEachRow(out, []any{&idx, &inserted, &state, &message}, func() error {
		switch {
		case idx == nil && inserted != nil:
			res.Inserted += int(*inserted)
		case idx != nil && state != nil && message != nil && int(*idx) < len(rows):
			bad = append(bad, Rejected{Index: int(*idx), Err: &pgconn.PgError{Severity: "ERROR", Code: *state, Message: *message}})
		default:
			return fmt.Errorf("notifyd_insert_each: unexpected row (%v, %v, %v)", idx, inserted, state)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bad, nil
}
