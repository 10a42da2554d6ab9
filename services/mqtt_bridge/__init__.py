"""MQTT ingest: a bridge from an MQTT broker (Mosquitto) to the raw topic.

Devices publish the packets HTTP ingest accepts (JSON or MessagePack) to
``harstream/v1/devices/<device_id>/packets``; the broker authenticates them (username =
device id, password = the device's token) and lets each publish only to its own topic
(:mod:`.mosquitto`, generated from the device registry by ``harstream devices mqtt-config``).
The bridge subscribes to all of them through a shared subscription at QoS 1, validates
each packet with ingest's own code (:mod:`.packets`), and acknowledges a message to the
broker only after Kafka acknowledged its record (or its dead letter): at-least-once from
the device's PUBACK to the raw topic (:mod:`.bridge`).
"""
