package postgres

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/notifyd/notifyd/internal/notification"
)

// insertSQL inserts a whole batch as one statement of column arrays: one
// round trip, binary parameters, and ON CONFLICT for duplicates by id.
const insertSQL = `
INSERT INTO notifications (id, user_id, event_type, title, body, data, created_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[])
ON CONFLICT (id) DO NOTHING`

// insertRows inserts rows and returns how many were new.
func insertRows(ctx context.Context, q pgx.Tx, rows []notification.Notification) (int64, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	ids := make([]uuid.UUID, len(rows))
	users := make([]uuid.UUID, len(rows))
	types := make([]string, len(rows))
	titles := make([]string, len(rows))
	bodies := make([]string, len(rows))
	data := make([][]byte, len(rows))
	created := make([]time.Time, len(rows))
	for i := range rows {
		r := &rows[i]
		ids[i], users[i], types[i], titles[i], bodies[i], data[i], created[i] =
			r.ID, r.UserID, r.EventType, r.Title, r.Body, r.Data, r.CreatedAt
	}
	tag, err := q.Exec(ctx, insertSQL, ids, users, types, titles, bodies, data, created)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
