#!/bin/sh
# SCRAM-SHA-512 users and ACLs of harstream's services on Apache Kafka (docker-compose
# init step; idempotent). Runs in the broker's network namespace and talks to its
# loopback-only admin listener; the services reach Kafka on the SASL listener only.
#
# Each service may touch only its own topics and consumer group (as k8s/base/
# kafka-users.yaml): only ingest writes raw, so nothing reaches the pipeline without
# passing ingest's device authentication. Every service may write the dead-letter topic.
set -eu  # POSIX sh: the apache/kafka image is Alpine-based

BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9094}"
PREFIX="${TOPIC_PREFIX:-harstream}"
PREPROCESS_APP_ID="${PREPROCESS_APP_ID:-harstream-preprocess}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

user() {  # name, password
  "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter \
    --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]" >/dev/null
  echo "user $1"
}

allow() {  # principal, operation, resource arguments...
  principal="$1"
  operation="$2"
  shift 2
  "$KAFKA_BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --add \
    --allow-principal "User:$principal" --operation "$operation" "$@" >/dev/null
}

topic_rights() {  # principal, topic, operations...
  principal="$1"
  topic="$2"
  shift 2
  for op in Describe "$@"; do allow "$principal" "$op" --topic "$topic"; done
}

group_rights() {  # principal, group
  for op in Read Describe; do allow "$1" "$op" --group "$2"; done
}

: "${KAFKA_INGEST_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"
: "${KAFKA_PREPROCESS_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"
: "${KAFKA_INFERENCE_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"
: "${KAFKA_ALERTING_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"
: "${KAFKA_HISTORY_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"
: "${KAFKA_LAG_READER_PASSWORD:?set it in .env (deploy/compose/make-env.sh)}"

user harstream-ingest "$KAFKA_INGEST_PASSWORD"
user harstream-preprocess "$KAFKA_PREPROCESS_PASSWORD"
user harstream-inference "$KAFKA_INFERENCE_PASSWORD"
user harstream-alerting "$KAFKA_ALERTING_PASSWORD"
user harstream-history "$KAFKA_HISTORY_PASSWORD"
user harstream-lag-reader "$KAFKA_LAG_READER_PASSWORD"

topic_rights harstream-ingest "$PREFIX.raw.v1" Write
topic_rights harstream-ingest "$PREFIX.heartbeats.v1" Write
topic_rights harstream-ingest "$PREFIX.dlq.v1" Write
allow harstream-ingest IdempotentWrite --cluster

topic_rights harstream-preprocess "$PREFIX.raw.v1" Read
topic_rights harstream-preprocess "$PREFIX.windows.v1" Write
topic_rights harstream-preprocess "$PREFIX.dlq.v1" Write
for op in Create Read Write Describe DescribeConfigs; do  # faust's changelog and leader topics
  allow harstream-preprocess "$op" --topic "$PREPROCESS_APP_ID-" --resource-pattern-type prefixed
done
group_rights harstream-preprocess "$PREPROCESS_APP_ID"

topic_rights harstream-inference "$PREFIX.windows.v1" Read
topic_rights harstream-inference "$PREFIX.predictions.v1" Write
topic_rights harstream-inference "$PREFIX.shadow-predictions.v1" Write
topic_rights harstream-inference "$PREFIX.dlq.v1" Write
group_rights harstream-inference harstream-inference

topic_rights harstream-alerting "$PREFIX.predictions.v1" Read
topic_rights harstream-alerting "$PREFIX.raw.v1" Read
topic_rights harstream-alerting "$PREFIX.heartbeats.v1" Read
topic_rights harstream-alerting "$PREFIX.alerts.v1" Write
topic_rights harstream-alerting "$PREFIX.dlq.v1" Write
group_rights harstream-alerting harstream-alerting

# Predictions become activity history; predictions it cannot use go to the DLQ.
topic_rights harstream-history "$PREFIX.predictions.v1" Read
topic_rights harstream-history "$PREFIX.dlq.v1" Write
group_rights harstream-history harstream-history

allow harstream-lag-reader Describe --topic "$PREFIX" --resource-pattern-type prefixed
allow harstream-lag-reader Describe --group harstream- --resource-pattern-type prefixed
allow harstream-lag-reader Describe --cluster
echo "ACLs set"
