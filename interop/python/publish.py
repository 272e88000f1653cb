"""Publishes to an iotkv edge with Python paho-mqtt (Debian's python3-paho-mqtt,
1.6.x), MQTT 3.1.1 or 5, mTLS + password, QoS 1, and prints one JSON line per
event. Usage:

  python3 publish.py HOST PORT CA CERT KEY USER PASSWORD VERSION PLAN_JSON

VERSION is 311 or 5. PLAN_JSON: {"expect_ack": N, "messages": [{"topic": "...",
"payload": "..."}, ...]}. It subscribes to the device's status/# topics, publishes,
reports what arrives, and waits (10 s at most) until status/ack reaches N and,
with "expect_error": true, until a status/error arrives.
"""
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

host, port, ca, cert, key, user, password, version, plan_json = sys.argv[1:10]
plan = json.loads(plan_json)
expect_ack = plan.get("expect_ack", 0)
acked_seq = threading.Event()
expect_error = plan.get("expect_error", False)
got_error = threading.Event()
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311

connected = threading.Event()
published = threading.Event()
result = {}


out_lock = threading.Lock()


def out(**kw):
    with out_lock:
        print(json.dumps(kw), flush=True)


def on_connect(client, userdata, flags, rc, properties=None):
    code = rc.value if hasattr(rc, "value") else rc
    result["rc"] = code
    out(connect_rc=code)
    connected.set()


def on_message(client, userdata, msg):
    payload = msg.payload.decode("utf-8", "replace")
    out(topic=msg.topic, payload=payload, retain=bool(msg.retain))
    if msg.topic.endswith("/status/error"):
        got_error.set()
    if msg.topic.endswith("/status/ack"):
        try:
            if json.loads(payload).get("seq", 0) >= expect_ack:
                acked_seq.set()
        except ValueError:
            pass


def on_publish(client, userdata, mid):
    published.set()


client = mqtt.Client(client_id=f"{user}-py-{version}", protocol=proto)
client.username_pw_set(user, password)
client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
client.on_connect = on_connect
client.on_message = on_message
client.on_publish = on_publish
try:
    client.connect(host, int(port), keepalive=30)
except Exception as e:  # TLS refusal surfaces here
    out(connect_error=str(e))
    sys.exit(0)
client.loop_start()
if not connected.wait(10) or result.get("rc") != 0:
    if not connected.is_set():
        out(connect_error="timeout or connection closed")
    client.loop_stop()
    sys.exit(0)

client.subscribe(f"iotkv/v1/devices/{user}/status/#", qos=1)
for m in plan["messages"]:
    published.clear()
    info = client.publish(m["topic"], m["payload"], qos=1)
    ok = published.wait(10)
    out(published=m["topic"], acked=ok)
out(ack_reached=acked_seq.wait(10))
if expect_error:
    out(error_seen=got_error.wait(10))
client.disconnect()
client.loop_stop()
