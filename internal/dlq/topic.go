package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// HeaderRoom is what a dead letter may add to its source record: notifyd's
// headers and the reason. The DLQ topic notifyd creates takes records this
// much larger than the input topic does, so that any record the input topic
// took fits as a dead letter.
const HeaderRoom = 64 << 10

// EnsureTopic creates the dead-letter topic unless it exists, with a
// max.message.bytes no smaller than the input topic's plus HeaderRoom. An
// existing topic is left as it is; if it cannot take a letter of the
// input topic's largest record (its limit plus HeaderRoom), that is
// logged: larger letters are kept in notifyd_dead_letters instead.
func EnsureTopic(ctx context.Context, adm *kadm.Client, log *slog.Logger, dlqTopic, inputTopic string, partitions int32) error {
	input, err := maxMessageBytes(ctx, adm, inputTopic)
	if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return fmt.Errorf("read max.message.bytes of %s: %w", inputTopic, err)
	}
	var configs map[string]*string
	limit := "the broker's default"
	if input > 0 {
		limit = strconv.FormatInt(input+HeaderRoom, 10)
		configs = map[string]*string{"max.message.bytes": &limit}
	}
	resp, err := adm.CreateTopic(ctx, partitions, -1, configs, dlqTopic)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		log.Info("dead-letter topic created", "topic", dlqTopic, "partitions", partitions, "max_message_bytes", limit)
		return nil
	case !errors.Is(err, kerr.TopicAlreadyExists):
		return fmt.Errorf("create topic %s: %w", dlqTopic, err)
	}
	have, err := maxMessageBytes(ctx, adm, dlqTopic)
	if err != nil {
		return fmt.Errorf("read max.message.bytes of %s: %w", dlqTopic, err)
	}
	if input > 0 && have < input+HeaderRoom {
		log.Warn("the dead-letter topic cannot take a letter of the input topic's largest records (its max.message.bytes is below the input topic's plus room for the dead-letter headers): larger dead letters are kept in the table notifyd_dead_letters",
			"dlq_topic", dlqTopic, "max_message_bytes", have, "input_topic", inputTopic, "input_max_message_bytes", input, "wanted", input+HeaderRoom)
	}
	return nil
}

func maxMessageBytes(ctx context.Context, adm *kadm.Client, topic string) (int64, error) {
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return 0, err
	}
	rc, err := rcs.On(topic, nil)
	if err != nil {
		return 0, err
	}
	if rc.Err != nil {
		return 0, rc.Err
	}
	for _, c := range rc.Configs {
		if c.Key == "max.message.bytes" && c.Value != nil {
			return strconv.ParseInt(*c.Value, 10, 64)
		}
	}
	return 0, fmt.Errorf("topic %s: the brokers report no max.message.bytes", topic)
}
