// Publishes a list of messages to an iotkv edge with MQTT.js (MQTT 5, mTLS +
// password, QoS 1) and prints one JSON line per message with the PUBACK
// reason code it got. Usage:
//   node publish.mjs URL CA CERT KEY USER PASSWORD PLAN_JSON
// PLAN_JSON: [{"topic":"...","payload":"...","qos":1}, ...]
import fs from 'node:fs';
import mqtt from 'mqtt';

const [url, ca, cert, key, username, password, planJSON] = process.argv.slice(2);
const plan = JSON.parse(planJSON);

const client = mqtt.connect(url, {
  protocolVersion: 5,
  ca: fs.readFileSync(ca),
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  username,
  password,
  rejectUnauthorized: true,
  reconnectPeriod: 0,
  connectTimeout: 10000,
  clientId: `${username}-node-${process.pid}`,
});

const done = (code, msg) => {
  if (msg) console.error(msg);
  client.end(true, () => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
};

client.on('error', (err) => {
  console.log(JSON.stringify({ connect_error: err.message, code: err.code ?? null }));
  done(0);
});

client.on('connect', async () => {
  console.log(JSON.stringify({ connected: true }));
  for (const m of plan) {
    const reason = await new Promise((resolve) => {
      client.publish(m.topic, m.payload, { qos: m.qos ?? 1 }, (err, packet) => {
        if (err) resolve(err.code ?? -1);
        else resolve(packet?.reasonCode ?? 0);
      });
    });
    console.log(JSON.stringify({ topic: m.topic, reason }));
  }
  done(0);
});
