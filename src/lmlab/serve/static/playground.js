// lmlab playground: streams /v1/completions (SSE) and colours each token by its probability.
// Plain browser JavaScript, no build step and no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null; // AbortController of the running request (Stop aborts it; the server then cancels)

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text) { $("status").textContent = text; }

function showError(message) {
  const span = document.createElement("span");
  span.className = "error";
  span.textContent = "\n[" + message + "]";
  $("output").appendChild(span);
}

async function loadModels() {
  const select = $("model");
  const res = await fetch("/v1/models", { headers: headers() });
  if (res.status === 401) {
    $("key-box").hidden = false;
    status("This server needs an API key: enter it above.");
    return;
  }
  const body = await res.json();
  const current = select.value;
  select.innerHTML = "";
  for (const m of body.data) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = m.id + " (" + m.family + (m.context_length ? ", context " + m.context_length : "") + ")";
    select.appendChild(opt);
  }
  if (current) select.value = current;
  status("");
}

async function init() {
  for (const [slider, label] of [["temperature", "temperature-value"], ["top-p", "top-p-value"], ["max-tokens", "max-tokens-value"]]) {
    const update = () => { $(label).textContent = $(slider).value; };
    $(slider).addEventListener("input", update);
    update();
  }
  $("colour").addEventListener("change", () => $("output").classList.toggle("coloured", $("colour").checked));
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  $("api-key").value = sessionStorage.getItem("lmlab-api-key") || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("lmlab-api-key", $("api-key").value); loadModels(); });
  $("output").addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) showTip(e.target); });
  $("output").addEventListener("mouseout", (e) => { if (e.target.classList.contains("tok")) $("tip").hidden = true; });
  try {
    const health = await (await fetch("/health")).json();
    $("max-tokens").max = String(health.max_tokens);
    if (+$("max-tokens").value > health.max_tokens) $("max-tokens").value = String(health.max_tokens);
    $("max-tokens-value").textContent = $("max-tokens").value;
    if (health.api_key_required) $("key-box").hidden = false;
    await loadModels();
  } catch (err) {
    status("Cannot reach the server: " + err);
  }
}

// Red (p <= 0.001) through yellow to green (p = 1), on a log scale: small models spread out too.
function colour(p) {
  const x = Math.min(1, Math.max(0, 1 + Math.log10(Math.max(p, 1e-12)) / 3));
  return "hsl(" + Math.round(120 * x) + ",75%,82%)";
}

// One span per token: its text, probability and the top alternatives (for the tooltip).
function addToken(text, logprob, top) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  if (text.includes("\n")) span.classList.add("nl"); // shows a return sign, so it can be seen and hovered
  if (logprob !== null && logprob !== undefined) {
    const p = Math.exp(logprob);
    span.dataset.p = p.toFixed(4);
    span.style.setProperty("--bg", colour(p));
  }
  if (top) span.dataset.top = JSON.stringify(top);
  $("output").appendChild(span);
}

function shown(token) { return JSON.stringify(token).slice(1, -1); } // newlines and spaces made visible

function showTip(span) {
  const tip = $("tip");
  tip.innerHTML = "";
  const title = document.createElement("div");
  title.textContent = "\"" + shown(span.textContent) + "\"" + (span.dataset.p ? "  p = " + (+span.dataset.p).toFixed(3) : "");
  tip.appendChild(title);
  if (span.dataset.top) {
    const table = document.createElement("table");
    const top = Object.entries(JSON.parse(span.dataset.top)).sort((a, b) => b[1] - a[1]);
    for (const [token, lp] of top) {
      const row = table.insertRow();
      if (token === span.textContent) row.className = "chosen";
      const p = Math.exp(lp);
      row.insertCell().textContent = "\"" + shown(token) + "\"";
      const bar = row.insertCell();
      const fill = document.createElement("span");
      fill.className = "bar";
      fill.style.width = Math.max(1, Math.round(60 * p)) + "px";
      bar.appendChild(fill);
      const cell = row.insertCell();
      cell.className = "p";
      cell.textContent = (100 * p).toFixed(1) + "%";
    }
    tip.appendChild(table);
  }
  const r = span.getBoundingClientRect();
  tip.hidden = false;
  tip.style.left = Math.min(r.left, window.innerWidth - tip.offsetWidth - 8) + "px";
  tip.style.top = (r.bottom + 6 + tip.offsetHeight > window.innerHeight ? r.top - tip.offsetHeight - 6 : r.bottom + 6) + "px";
}

function render(choice) {
  const lp = choice.logprobs;
  if (lp && lp.tokens && lp.tokens.length && lp.tokens.join("") === choice.text) {
    lp.tokens.forEach((t, i) => addToken(t, lp.token_logprobs[i], lp.top_logprobs ? lp.top_logprobs[i] : null));
    return lp.tokens.length;
  }
  if (choice.text) { // text that does not split into whole tokens (e.g. held back for UTF-8): one span
    const lps = lp && lp.token_logprobs ? lp.token_logprobs.filter((x) => x !== null) : [];
    addToken(choice.text, lps.length ? Math.min(...lps) : null, lp && lp.top_logprobs ? lp.top_logprobs[0] : null);
  }
  return lp && lp.tokens ? lp.tokens.length : 0;
}

async function generate() {
  if (controller) return;
  const prompt = $("prompt").value;
  const output = $("output");
  output.innerHTML = "";
  const p = document.createElement("span");
  p.className = "prompt";
  p.textContent = prompt;
  output.appendChild(p);
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let tokens = 0, finish = null;
  status("generating…");
  try {
    const res = await fetch("/v1/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value, prompt: prompt, stream: true, logprobs: 5,
        temperature: +$("temperature").value, top_p: +$("top-p").value, max_tokens: +$("max-tokens").value,
        ...($("seed").value !== "" ? { seed: +$("seed").value } : {}),
      }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({ error: { message: res.statusText } }));
      showError(res.status + ": " + body.error.message);
      status("");
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { showError(chunk.error.message); continue; }
          for (const choice of chunk.choices) {
            tokens += render(choice);
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
      const seconds = (performance.now() - started) / 1000;
      status(tokens + " tokens · " + (tokens / seconds).toFixed(1) + " tokens/s");
    }
    const seconds = (performance.now() - started) / 1000;
    status(tokens + " tokens in " + seconds.toFixed(2) + " s · " + (tokens / seconds).toFixed(1) + " tokens/s · finish: " + (finish || "?"));
  } catch (err) {
    if (err.name === "AbortError") status(tokens + " tokens · stopped");
    else { showError(String(err)); status(""); }
  } finally {
    controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

document.addEventListener("DOMContentLoaded", init);
