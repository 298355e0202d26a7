// The official openai npm client against a running openembed server.
// Usage: node openai_node.cjs BASE_URL REFERENCE_JSONL (with NODE_PATH pointing at its node_modules).
// Checks embeddings.create with default settings (base64) and encoding_format "float" against the
// sentence-transformers reference vectors. Exits 1 on a mismatch.
const fs = require("fs");
const OpenAI = require("openai");

async function main() {
  const [baseURL, reference] = process.argv.slice(2);
  const lines = fs.readFileSync(reference, "utf8").split("\n").slice(1).filter(Boolean).map(JSON.parse)
    .filter((l) => l.tokens === l.untruncated_tokens);
  const texts = lines.map((l) => l.text);
  const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0 });
  const failures = [];
  for (const [label, extra] of [["default (base64)", {}], ["float", { encoding_format: "float" }]]) {
    const resp = await client.embeddings.create({ model: "text-embedding-3-small", input: texts, ...extra });
    let minCos = 1, maxDiff = 0;
    resp.data.forEach((d, i) => {
      if (d.index !== i) failures.push(`${label}: index ${d.index} at ${i}`);
      const got = Array.from(d.embedding), want = lines[i].embedding;
      let dot = 0, na = 0, nb = 0;
      for (let k = 0; k < want.length; k++) {
        dot += got[k] * want[k]; na += got[k] * got[k]; nb += want[k] * want[k];
        maxDiff = Math.max(maxDiff, Math.abs(got[k] - want[k]));
      }
      minCos = Math.min(minCos, dot / Math.sqrt(na * nb));
    });
    console.log(`${label}: ${resp.data.length} vectors, min cosine ${minCos.toFixed(7)}, max abs diff ${maxDiff.toExponential(2)}`);
    if (resp.data.length !== texts.length || minCos < 0.99999 || maxDiff > 1e-4) failures.push(`${label}: vectors differ`);
  }
  try {
    await client.embeddings.create({ model: "no-such-model", input: "x" });
    failures.push("unknown model did not throw");
  } catch (e) {
    if (e.status !== 404) failures.push(`unknown model: ${e}`);
  }
  failures.forEach((f) => console.log("FAIL:", f));
  process.exit(failures.length ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(1); });
