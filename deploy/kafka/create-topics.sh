#!/bin/sh
# Create harstream's topics on Apache Kafka (docker-compose init step; idempotent).
#
# Names follow shared/topics.py: <prefix>.<kind>.v<version>. Every topic has the same
# partition count: messages are keyed by device id, and a consumer group cannot use more
# workers than partitions, so TOPIC_PARTITIONS caps the replicas of each worker.
# The services also create missing topics themselves (with their own TOPIC_PARTITIONS), but
# only this script sets retention and compaction.
set -eu  # POSIX sh: the apache/kafka image is Alpine-based

BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}"
PREFIX="${TOPIC_PREFIX:-harstream}"
PARTITIONS="${TOPIC_PARTITIONS:-8}"
REPLICATION="${TOPIC_REPLICATION_FACTOR:-1}"
PREPROCESS_APP_ID="${PREPROCESS_APP_ID:-harstream-preprocess}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

day=$((24 * 3600 * 1000))

create() {  # name, extra --config arguments...
  local name="$1"
  shift
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$PARTITIONS" --replication-factor "$REPLICATION" "$@"
}

# Raw packets and windows are replayable inputs: a day is enough to recover from an outage.
create "$PREFIX.raw.v1" --config "retention.ms=$day"
create "$PREFIX.windows.v1" --config "retention.ms=$day"
create "$PREFIX.predictions.v1" --config "retention.ms=$((7 * day))"
# A candidate model's shadow predictions (inference with HARSTREAM_INFERENCE_SHADOW=true):
# kept as long as the live ones, to compare them.
create "$PREFIX.shadow-predictions.v1" --config "retention.ms=$((7 * day))"
create "$PREFIX.alerts.v1" --config "retention.ms=$((30 * day))"
# Dead letters wait for a human: keep them a month.
create "$PREFIX.dlq.v1" --config "retention.ms=$((30 * day))"
# Ingest's heartbeats (alerting counts device silence only while they flow): an hour.
create "$PREFIX.heartbeats.v1" --config "retention.ms=3600000"
# The preprocess worker's device-state table (faust changelog): compacted, the latest state
# per device is all a restarting worker needs. Faust expects its partitions to equal the
# source topic's.
create "$PREPROCESS_APP_ID-device-streams-changelog" --config cleanup.policy=compact

"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --list
