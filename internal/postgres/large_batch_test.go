package postgres

import (
	"context"
	"testing"
)

// A batch as large as coalescing makes them keeps the contract: exact
// content, NULL data, duplicates skipped and counted (against the table and
// inside the batch), offsets advanced in the same transaction.
const largeBatch = 6000

func TestWriteLargeBatchKeepsTheContract(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := migratedStore(t)
	claim(t, st, 0)
	rows := testRows(largeBatch + 500)
	rows[7].Data = nil
	res, err := st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic, Ranges: []Range{{0, NoOffset, 100}}, Rows: rows})
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if res.Inserted != len(rows) || res.Duplicates != 0 {
		t.Fatalf("first write: got %+v, want %d inserted, 0 duplicates", res, len(rows))
	}
	var data *string
	if err := st.Pool().QueryRow(ctx, "SELECT data::text FROM notifications WHERE id = $1", rows[7].ID).Scan(&data); err != nil {
		t.Fatal(err)
	}
	if data != nil {
		t.Fatalf("data of a row without data: got %q, want NULL", *data)
	}
	var title string
	var n int64
	if err := st.Pool().QueryRow(ctx, "SELECT title, (data->>'n')::bigint FROM notifications WHERE id = $1", rows[1234].ID).Scan(&title, &n); err != nil {
		t.Fatal(err)
	}
	if title != rows[1234].Title || n != 1234 {
		t.Fatalf("row 1234: got title %q n %d, want %q 1234", title, n, rows[1234].Title)
	}

	// Half old ids, half new, and a repeat inside the batch.
	again := append(rows[:largeBatch/2:largeBatch/2], testRows(largeBatch/2)...)
	again = append(again, again[len(again)-1])
	res, err = st.Write(ctx, &Batch{Group: testGroup, Topic: testTopic, Ranges: []Range{{0, 100, 200}}, Rows: again})
	if err != nil {
		t.Fatalf("second write: %v", err)
	}
	if res.Inserted != largeBatch/2 || res.Duplicates != largeBatch/2+1 {
		t.Fatalf("second write: got %+v, want %d inserted, %d duplicates", res, largeBatch/2, largeBatch/2+1)
	}
	if got, want := countRows(t, st), len(rows)+largeBatch/2; got != want {
		t.Fatalf("rows: got %d, want %d", got, want)
	}
	if got := offsets(t, st)[0]; got != 200 {
		t.Fatalf("offset: got %d, want 200", got)
	}
}
