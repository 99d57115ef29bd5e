package notification_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/notifyd/notifyd/internal/notification"
)

func ExampleDecode() {
	src := notification.Source{Topic: "notifications", Partition: 0, Offset: 7, Timestamp: time.Now()}

	value := []byte(`{
		"user_id": "3f2b8c1e-6a4d-4e7b-9c0a-1d2e3f4a5b6c",
		"event_type": "order.shipped",
		"title": "Your order has shipped \ud83d\ude9a",
		"body": "",
		"created_at": "2025-03-14T11:26:53.123456789+02:00",
		"data": {"order": 48213, "carrier": "DHL"},
		"from_a_newer_producer": true
	}`)
	n, err := notification.Decode(value, src, notification.Limits{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(n.ID == notification.DerivedID("notifications", 0, 7))
	fmt.Println(n.Title)
	fmt.Println(n.CreatedAt)
	fmt.Println(string(n.Data))

	_, err = notification.Decode([]byte(`{"user_id": "abc"}`), src, notification.Limits{})
	var e *notification.Error
	if errors.As(err, &e) {
		fmt.Println(e.Class, e.Field)
		fmt.Println(err)
	}
	// Output:
	// true
	// Your order has shipped 🚚
	// 2025-03-14 09:26:53.123456 +0000 UTC
	// {"order": 48213, "carrier": "DHL"}
	// validate user_id
	// field "user_id": "abc" is not a UUID (want 8-4-4-4-12 hex digits)
}
