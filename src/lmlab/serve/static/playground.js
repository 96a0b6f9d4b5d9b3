// lmlab playground: Completion mode streams /v1/completions, Chat mode /v1/chat/completions (SSE); both colour
// each token by its probability. Plain browser JavaScript, no build step and no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null; // AbortController of the running request (Stop aborts it; the server then cancels)
let models = {}; // the /v1/models cards by id
const turns = []; // the chat so far: {role: "user" | "assistant", content} (the system prompt is added on send)

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
  models = {};
  for (const m of body.data) {
    models[m.id] = m;
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.dataset.label = m.id + " (" + m.family + (m.context_length ? ", context " + m.context_length : "") + ")";
    select.appendChild(opt);
  }
  if (current) select.value = current;
  status("");
  updateMode();
}

const chatMode = () => document.body.dataset.mode === "chat";

// Show the chosen mode; in chat mode, models without a chat template are marked and cannot be sent to.
function updateMode() {
  document.body.dataset.mode = document.querySelector("[name=mode]:checked").value;
  for (const opt of $("model").options) {
    opt.textContent = opt.dataset.label + (chatMode() && !models[opt.value].chat ? " (no chat)" : "");
  }
  const model = models[$("model").value];
  const canChat = !model || model.chat;
  $("no-chat").hidden = canChat;
  $("no-chat").textContent = canChat ? "" : "Model '" + model.id + "' has no chat template, so it cannot chat: "
    + "choose another model, start the server with --chat-template FILE.jinja, or use Completion mode.";
  $("message").disabled = !canChat;
  busy(controller !== null);
}

function busy(on) {
  const model = models[$("model").value];
  $("generate").disabled = on;
  $("send").disabled = on || !(model && model.chat);
  $("new-chat").disabled = on;
  $("stop").disabled = !on;
  for (const radio of document.querySelectorAll("[name=mode]")) radio.disabled = on;
}

async function init() {
  for (const [slider, label] of [["temperature", "temperature-value"], ["top-p", "top-p-value"], ["max-tokens", "max-tokens-value"]]) {
    const update = () => { $(label).textContent = $(slider).value; };
    $(slider).addEventListener("input", update);
    update();
  }
  $("colour").addEventListener("change", () => {
    for (const box of document.querySelectorAll(".tokens")) box.classList.toggle("coloured", $("colour").checked);
  });
  $("generate").addEventListener("click", generate);
  $("send").addEventListener("click", send);
  $("new-chat").addEventListener("click", newChat);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  for (const radio of document.querySelectorAll("[name=mode]")) radio.addEventListener("change", updateMode);
  $("model").addEventListener("change", updateMode);
  $("api-key").value = sessionStorage.getItem("lmlab-api-key") || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("lmlab-api-key", $("api-key").value); loadModels(); });
  for (const box of document.querySelectorAll(".tokens")) {
    box.addEventListener("mouseover", (e) => { if (e.target.classList.contains("tok")) showTip(e.target); });
    box.addEventListener("mouseout", (e) => { if (e.target.classList.contains("tok")) $("tip").hidden = true; });
  }
  updateMode();
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

// One span per token: its text, probability and the top alternatives ({token: logprob}, for the tooltip).
function addToken(parent, text, logprob, top) {
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
  parent.appendChild(span);
}

// A streamed piece of text and its tokens (with their logprobs and top alternatives) as spans under `parent`:
// one per token, or one for the whole text when the tokens do not join to it (e.g. text held back for UTF-8).
// Returns the number of tokens.
function addTokens(parent, text, tokens, logprobs, tops) {
  if (tokens.length && tokens.join("") === text) {
    tokens.forEach((t, i) => addToken(parent, t, logprobs[i], tops[i]));
  } else if (text) {
    const lps = logprobs.filter((x) => x !== null && x !== undefined);
    addToken(parent, text, lps.length ? Math.min(...lps) : null, tops[0]);
  }
  return tokens.length;
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

// The sampling controls, as both endpoints take them.
function sampling() {
  return {
    model: $("model").value, stream: true,
    temperature: +$("temperature").value, top_p: +$("top-p").value, max_tokens: +$("max-tokens").value,
    ...($("seed").value !== "" ? { seed: +$("seed").value } : {}),
  };
}

// POST `body` to `url` and read its SSE stream: render(choice) draws each choice and returns its token count;
// the server's errors (a JSON error response, or an `error` object in the stream) go to onError as text.
// Returns the finish reason, "stopped" (Stop), or null after an error.
async function stream(url, body, render, onError) {
  controller = new AbortController();
  busy(true);
  const started = performance.now();
  const rate = (tokens) => (tokens / ((performance.now() - started) / 1000)).toFixed(1) + " tokens/s";
  let tokens = 0, finish = null, failed = false;
  status("generating…");
  try {
    const res = await fetch(url, { method: "POST", headers: headers(), signal: controller.signal, body: JSON.stringify(body) });
    if (!res.ok) {
      const err = await res.json().catch(() => null);
      onError(res.status + ": " + (err && err.error ? err.error.message : res.statusText));
      status("");
      return null;
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
          if (chunk.error) { onError(chunk.error.message); failed = true; continue; }
          for (const choice of chunk.choices) {
            tokens += render(choice);
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
      status(tokens + " tokens · " + rate(tokens));
    }
    const seconds = (performance.now() - started) / 1000;
    status(tokens + " tokens in " + seconds.toFixed(2) + " s · " + rate(tokens) + " · finish: " + (finish || "?"));
    return failed ? null : finish;
  } catch (err) {
    if (err.name === "AbortError") { status(tokens + " tokens · stopped"); return "stopped"; }
    onError(String(err));
    status("");
    return null;
  } finally {
    controller = null;
    busy(false);
  }
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
  await stream("/v1/completions", { ...sampling(), prompt: prompt, logprobs: 5 }, (choice) => {
    const lp = choice.logprobs || {};
    return addTokens(output, choice.text, lp.tokens || [], lp.token_logprobs || [], lp.top_logprobs || []);
  }, showError);
}

// ------------------------------------------------------------------------------------------------ chat mode

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.dataset.role = role;
  if (text) div.textContent = text;
  $("conversation").appendChild(div);
  div.scrollIntoView({ block: "nearest" });
  return div;
}

function newChat() {
  if (controller) return;
  turns.length = 0;
  $("conversation").innerHTML = "";
  status("");
  $("message").focus();
}

// Send the message box's text with the whole conversation (system prompt, then every turn) and stream the reply.
// A reply cut short (Stop, an error) stays in the conversation; a turn with no reply at all is taken back (its
// text returns to the message box).
async function send() {
  const text = $("message").value;
  if (controller || $("send").disabled || !text.trim()) return;
  $("message").value = "";
  turns.push({ role: "user", content: text });
  const asked = addMessage("user", text);
  const bubble = addMessage("assistant");
  const system = $("system").value.trim() ? [{ role: "system", content: $("system").value }] : [];
  let reply = "";
  const finish = await stream("/v1/chat/completions",
    { ...sampling(), messages: [...system, ...turns], logprobs: true, top_logprobs: 5 }, (choice) => {
      const content = choice.delta.content || "";
      const entries = (choice.logprobs && choice.logprobs.content) || [];
      reply += content;
      const count = addTokens(bubble, content, entries.map((e) => e.token), entries.map((e) => e.logprob),
        entries.map((e) => Object.fromEntries((e.top_logprobs || []).map((a) => [a.token, a.logprob]))));
      bubble.scrollIntoView({ block: "nearest" });
      return count;
    }, (message) => addMessage("error", message));
  if (reply) {
    turns.push({ role: "assistant", content: reply });
    if (finish === "stopped" || finish === "length") bubble.dataset.note = finish === "stopped" ? "stopped" : "max tokens reached";
  } else {
    turns.pop();
    asked.remove();
    bubble.remove();
    if (!$("message").value) $("message").value = text; // to edit and send again
  }
}

document.addEventListener("DOMContentLoaded", init);
