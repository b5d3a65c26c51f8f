// r1v chat page: streams /v1/chat/completions (SSE); thinking in a collapsible box, answer below.
// All model text is inserted with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // OpenAI-style messages of the conversation so far
let pending = [];            // data URLs of the images attached to the next question
let modelName = null;
let controller = null;

$("api_key").value = sessionStorage.getItem("r1v_api_key") || "";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) { h["Authorization"] = "Bearer " + key; sessionStorage.setItem("r1v_api_key", key); }
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) { $("status").textContent = r.status === 401 ? "enter the API key" : "models: " + r.status; return; }
    modelName = (await r.json()).data[0].id;
    $("model").textContent = "· " + modelName;
  } catch (e) { $("status").textContent = "server unreachable"; }
}

function addImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => {
    pending.push(reader.result);
    const img = document.createElement("img");
    img.src = reader.result;
    $("preview").appendChild(img);
  };
  reader.readAsDataURL(file);
}

$("file").addEventListener("change", (e) => { for (const f of e.target.files) addImage(f); e.target.value = ""; });
$("question").addEventListener("paste", (e) => {
  for (const item of e.clipboardData.items) if (item.kind === "file") addImage(item.getAsFile());
});
$("api_key").addEventListener("change", loadModel);
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });

function newTurn(text, images) {
  const turn = document.createElement("div");
  turn.className = "turn";
  const q = document.createElement("div");
  q.className = "user";
  q.textContent = text;
  turn.appendChild(q);
  for (const src of images) { const img = document.createElement("img"); img.src = src; turn.appendChild(img); }
  const details = document.createElement("details");
  details.className = "thinking";
  details.open = true;
  const summary = document.createElement("summary");
  summary.textContent = "thinking…";
  const think = document.createElement("div");
  think.className = "text";
  details.append(summary, think);
  details.hidden = true;
  const answer = document.createElement("div");
  answer.className = "answer";
  const meta = document.createElement("div");
  meta.className = "meta";
  turn.append(details, answer, meta);
  turn.dataset.state = "streaming";
  $("log").appendChild(turn);
  return { turn, details, summary, think, answer, meta };
}

async function ask(ev) {
  ev.preventDefault();
  const text = $("question").value.trim();
  if (!text && pending.length === 0) return;
  if (!modelName) await loadModel();
  const content = pending.map((url) => ({ type: "image_url", image_url: { url } }));
  content.push({ type: "text", text });
  const ui = newTurn(text, pending);
  history.push({ role: "user", content });
  pending = []; $("preview").textContent = ""; $("question").value = "";
  const body = { model: modelName || undefined, messages: history, stream: true,
                 max_tokens: parseInt($("max_tokens").value || "512", 10),
                 temperature: parseFloat($("temperature").value || "0.6") };
  const budget = $("max_think").value;
  if (budget !== "") body.max_think_tokens = parseInt(budget, 10);
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false; $("status").textContent = "generating…";
  let answer = "", finish = null;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                     signal: controller.signal });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg += ": " + (await r.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message);
          for (const ch of msg.choices || []) {
            const d = ch.delta || {};
            if (d.reasoning_content) { ui.details.hidden = false; ui.think.textContent += d.reasoning_content; }
            if (d.content) {
              if (ui.details.open && ui.think.textContent) ui.details.open = false;  // fold the thought
              answer += d.content; ui.answer.textContent = answer;
            }
            if (ch.finish_reason) finish = ch.finish_reason;
          }
        }
      }
    }
    ui.summary.textContent = "thought (" + ui.think.textContent.length + " characters)";
    ui.meta.textContent = "finish: " + finish;
    ui.turn.dataset.state = "done";
    history.push({ role: "assistant", content: answer });
    $("status").textContent = "done";
  } catch (e) {
    ui.turn.dataset.state = "error";
    const err = document.createElement("div");
    err.className = "error";
    err.textContent = e.name === "AbortError" ? "stopped" : String(e.message || e);
    ui.turn.appendChild(err);
    history.pop();
    $("status").textContent = "error";
  } finally {
    controller = null; $("send").disabled = false; $("stop").disabled = true;
  }
}

$("form").addEventListener("submit", ask);
loadModel();
