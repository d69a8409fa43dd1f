// The npm `openai` package against a pdbatch server: upload, create batches, list them page by
// page, cancel one, wait for another and download its output. Run by tests/server/test_node_client.py:
//     node node_client.mjs BASE_URL
// Prints one JSON object with what it saw; every wait is bounded.
import OpenAI, { toFile } from "openai";

const baseURL = process.argv[2];
const client = new OpenAI({ baseURL, apiKey: "test-key-do-not-store", maxRetries: 0, timeout: 10000 });
const endpoint = "/v1/chat/completions";

function jsonl(prefix, n) {
  const rows = [];
  for (let i = 0; i < n; i++) {
    rows.push(JSON.stringify({
      custom_id: `${prefix}-${i}`, method: "POST", url: endpoint,
      body: { model: "m", messages: [{ role: "user", content: `hello ${prefix} ${i}` }] },
    }));
  }
  return Buffer.from(rows.join("\n") + "\n");
}

async function upload(prefix, n) {
  return client.files.create({ file: await toFile(jsonl(prefix, n), `${prefix}.jsonl`), purpose: "batch" });
}

const small = await upload("run", 3);
const big = await upload("cancel", 200);
const created = [];
for (const f of [small, small, big]) {
  created.push(await client.batches.create({ input_file_id: f.id, endpoint, completion_window: "24h" }));
}
const cancelled = await client.batches.cancel(created[2].id);

// pagination: one page of two, then the next page; and the auto-paginating iterator
const first = await client.batches.list({ limit: 2 });
const pages = [first.data.map((b) => b.id)];
let page = first;
for (let i = 0; i < 5 && page.hasNextPage(); i++) {
  page = await page.getNextPage();
  pages.push(page.data.map((b) => b.id));
}
const iterated = [];
for await (const b of client.batches.list({ limit: 2 })) {
  iterated.push(b.id);
  if (iterated.length > 10) break;
}

async function settle(id) {
  let b;
  for (let i = 0; i < 200; i++) {
    b = await client.batches.retrieve(id);
    if (["completed", "failed", "expired", "cancelled"].includes(b.status)) return b;
    await new Promise((r) => setTimeout(r, 50));
  }
  return b;
}

const done = await settle(created[0].id);
const stopped = await settle(created[2].id);
const output = await (await client.files.content(done.output_file_id)).text();
console.log(JSON.stringify({
  small: small.id, big: big.id, bytes: small.bytes,
  created: created.map((b) => b.id), cancel_answer: cancelled.status,
  pages, iterated, done_status: done.status, counts: done.request_counts,
  stopped_status: stopped.status,
  output: output.trim().split("\n").map((l) => JSON.parse(l)),
}));
