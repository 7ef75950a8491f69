// Sends one Celery task with celery-node, by task name and queue name only, and waits
// for its result in the result backend: what an upstream service in Node.js does.
//
//   node send.js BROKER_URL BACKEND_URL QUEUE TASK_NAME KWARGS_JSON TIMEOUT_MS
//
// Prints one JSON line: {"task_id": ..., "result": ...}; exits 1 with the error otherwise.
"use strict";
const celery = require("celery-node");

async function main() {
  const [broker, backend, queue, task, kwargs, timeout] = process.argv.slice(2);
  const client = celery.createClient(broker, backend, queue);
  try {
    await client.isReady();
    const result = client.sendTask(task, [], JSON.parse(kwargs));
    const value = await result.get(Number(timeout));
    console.log(JSON.stringify({ task_id: result.taskId, result: value }));
  } finally {
    await client.disconnect();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(String((error && error.stack) || error));
    process.exit(1);
  },
);
