/* souq chat widget. Embed with:
 *   <script src="//SOUQ_HOST/widget.js" data-souq-key="WIDGET_KEY" async></script>
 * It adds a chat button; the visitor's session is kept in localStorage, and the chat is
 * live over souq's WebSocket, resuming from the last seq it saw after a drop. The clip
 * button uploads a photo or a document and sends it; pictures show in the chat. */
(function () {
  var script = document.currentScript;
  if (!script) return;
  var key = script.getAttribute("data-souq-key");
  var base = new URL(script.src, location.href);
  var http = base.origin;
  var ws = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + "/v1/ws";
  var storeKey = "souq-visitor-" + key;
  var state = JSON.parse(localStorage.getItem(storeKey) || "null");
  var lastSeq = 0, socket = null, seen = {};

  var box = document.createElement("div");
  box.style.cssText = "position:fixed;right:16px;bottom:16px;font:14px sans-serif;z-index:2147483647";
  box.innerHTML =
    '<div class="souq-panel" style="display:none;width:300px;height:380px;background:#fff;border:1px solid #ccc;border-radius:8px;flex-direction:column;margin-bottom:8px">' +
    '<div class="souq-log" style="flex:1;overflow:auto;padding:8px"></div>' +
    '<form class="souq-form" style="display:flex;border-top:1px solid #eee"><input class="souq-input" style="flex:1;border:0;padding:8px" placeholder="Write a message">' +
    '<input class="souq-file" type="file" style="display:none"><button type="button" class="souq-attach" title="Send a file" style="border:0;padding:8px">&#128206;</button>' +
    '<button style="border:0;padding:8px">Send</button></form></div>' +
    '<button class="souq-open" style="float:right;border:0;border-radius:20px;padding:10px 16px;background:#222;color:#fff">Chat</button>';
  document.body.appendChild(box);
  var panel = box.querySelector(".souq-panel"), log = box.querySelector(".souq-log");
  var form = box.querySelector(".souq-form"), input = box.querySelector(".souq-input");
  var picker = box.querySelector(".souq-file");

  function show(m) {
    if (seen[m.seq]) return;
    seen[m.seq] = true;
    var line = document.createElement("div");
    line.style.margin = "4px 0";
    line.style.textAlign = m.author.kind === "customer" ? "right" : "left";
    if (m.text) line.appendChild(document.createTextNode(m.text));
    if (m.file && m.file.url) {
      var link = m.file.url.charAt(0) === "/" ? http + m.file.url : null;
      if (!link) { /* only links of this server are followed */ }
      else if (/^image\//.test(m.file.content_type)) {
        var img = document.createElement("img");
        img.src = link; img.alt = m.file.name;
        img.style.cssText = "display:block;max-width:100%;max-height:200px;margin-top:4px";
        if (m.author.kind === "customer") img.style.marginLeft = "auto";
        line.appendChild(img);
      } else {
        var a = document.createElement("a");
        a.href = link; a.target = "_blank"; a.rel = "noopener"; a.textContent = m.file.name;
        a.style.display = "block";
        line.appendChild(a);
      }
    } else if (m.file) {
      line.appendChild(document.createTextNode(m.file.name + " (removed)"));
    }
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    socket = new WebSocket(ws + "?token=" + encodeURIComponent(state.token) + "&resume=" + state.chat_id + ":" + lastSeq);
    socket.onmessage = function (event) {
      var frame = JSON.parse(event.data);
      if (frame.type === "message" && frame.chat_id === state.chat_id) {
        show(frame.message);
        lastSeq = Math.max(lastSeq, frame.message.seq);
        socket.send(JSON.stringify({ type: "read", chat_id: state.chat_id, seq: lastSeq }));
      }
    };
    socket.onclose = function () { setTimeout(connect, 1000); };
  }

  function start() {
    fetch(http + "/v1/widget/" + encodeURIComponent(key) + "/visitors", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(state ? { token: state.token } : {})
    }).then(function (r) { return r.json(); }).then(function (v) {
      if (v.error) { log.textContent = v.error.message; return; }
      state = { token: v.token, chat_id: v.chat_id };
      localStorage.setItem(storeKey, JSON.stringify(state));
      connect();
    });
  }

  box.querySelector(".souq-open").onclick = function () {
    var open = panel.style.display === "none";
    panel.style.display = open ? "flex" : "none";
    if (open && !socket) start();
  };
  box.querySelector(".souq-attach").onclick = function () { picker.click(); };
  picker.onchange = function () {
    var file = picker.files[0];
    picker.value = "";
    if (!file || !state || !socket || socket.readyState !== 1) return;
    fetch(http + "/v1/chats/" + state.chat_id + "/files?name=" + encodeURIComponent(file.name), {
      method: "POST",
      headers: { authorization: "Bearer " + state.token },
      body: file
    }).then(function (r) { return r.json(); }).then(function (f) {
      if (f.error) { alert(f.error.message); return; }
      socket.send(JSON.stringify({ type: "send", chat_id: state.chat_id, payload: "file", file_id: f.id, local_id: "f" + Date.now() }));
    });
  };
  form.onsubmit = function (e) {
    e.preventDefault();
    if (!socket || socket.readyState !== 1 || !input.value.trim()) return;
    socket.send(JSON.stringify({ type: "send", chat_id: state.chat_id, text: input.value, local_id: String(Date.now()) }));
    input.value = "";
  };
})();
