/* souq chat widget. Embed with:
 *   <script src="//SOUQ_HOST/widget.js" data-souq-key="WIDGET_KEY" async></script>
 * It adds a chat button in a shadow root (host element #souq-widget, open), so the page's
 * styles do not reach it. The visitor's session, chat and last seq are kept in
 * localStorage; the chat is live over souq's WebSocket and resumes from the last seq after
 * a drop or a new page load, keyed by seq so nothing shows twice. A new visitor may give a
 * name and e-mail first (optional). The clip button uploads a photo or a document and
 * sends it; pictures show in the chat. Every REST call it makes is CORS-open: the token
 * goes in a header, never a cookie. */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-souq-key]");
  if (!script || document.getElementById("souq-widget")) return;
  var key = script.getAttribute("data-souq-key");
  var base = new URL(script.src, location.href);
  var http = base.origin;
  var wsUrl = (base.protocol === "https:" ? "wss://" : "ws://") + base.host + "/v1/ws";
  var storeKey = "souq-visitor-" + key;
  var state = null; // {token, chat_id, read}
  try { state = JSON.parse(localStorage.getItem(storeKey) || "null"); } catch (e) { state = null; }
  var socket = null, live = false, retry = 0, retryTimer = null, starting = false;
  var bySeq = {}, pending = {}, opRead = 0, opReceived = 0, unread = 0;
  var operator = null, presence = null, typingSent = 0, typingStop = null, theirTyping = null;
  var finished = false;
  // Whether the domain asks a new visitor for a name and an e-mail first (GET
  // /v1/widget/{key}); until the answer comes, it does not.
  var prechat = false;

  var CSS =
    ":host{all:initial;position:fixed;right:16px;bottom:16px;z-index:2147483647;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1a1a}" +
    ".box{all:initial;display:block;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1a1a}" +
    "*{box-sizing:border-box}[hidden]{display:none!important}" +
    ":focus-visible{outline:3px solid #b3261e;outline-offset:2px}" +
    ".panel{display:flex;flex-direction:column;width:min(360px,calc(100vw - 32px));height:min(520px,calc(100vh - 96px));background:#fff;border:1px solid #999;border-radius:10px;margin-bottom:8px;box-shadow:0 4px 18px rgba(0,0,0,.18);overflow:hidden}" +
    "header{display:flex;align-items:center;gap:8px;padding:8px 10px;background:#1f1f1f;color:#fff}" +
    "header .t{flex:1}header .op{display:block;font-size:13px;color:#ddd}" +
    "button{font:inherit;min-height:40px;min-width:40px;border:1px solid #0b57d0;border-radius:8px;background:#fff;color:#0b57d0;cursor:pointer;padding:0 10px}" +
    "button.primary{background:#0b57d0;color:#fff}header button{background:transparent;color:#fff;border-color:#fff}" +
    "input{font:inherit;color:inherit;min-height:40px;padding:6px 8px;border:1px solid #767676;border-radius:8px;background:#fff;width:100%}" +
    "label{display:block;font-weight:600;margin:6px 0 2px}" +
    ".vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}" +
    ".pre{padding:12px;display:grid;gap:4px}.pre p{margin:0 0 6px}" +
    ".log{list-style:none;margin:0;padding:10px;flex:1;overflow:auto;display:flex;flex-direction:column;gap:6px}" +
    ".m{max-width:85%;padding:6px 10px;border-radius:10px;background:#f1f1f1;white-space:pre-wrap;overflow-wrap:anywhere}" +
    ".m.me{align-self:flex-end;background:#e3edfd}.m.sys{align-self:center;background:none;color:#555;font-style:italic}" +
    ".m img{display:block;max-width:100%;max-height:200px;margin-top:4px;border-radius:6px}" +
    ".tick{font-size:12px;color:#555;margin-left:6px;white-space:nowrap}.tick[data-tick=read]{color:#0b57d0}.tick[data-tick=failed]{color:#a50e0e}" +
    ".info{padding:0 10px;min-height:1.4em;color:#555;font-size:13px}" +
    ".send{display:flex;gap:6px;padding:8px;border-top:1px solid #ddd}.send input{flex:1;min-width:0;width:auto}.send button{flex:none}" +
    ".open{float:right;border-radius:22px;padding:0 18px;min-height:44px;background:#1f1f1f;color:#fff;border-color:#1f1f1f;position:relative}" +
    ".badge{position:absolute;top:-6px;right:-6px;min-width:22px;height:22px;border-radius:11px;background:#b3261e;color:#fff;font-size:13px;line-height:22px;text-align:center;padding:0 5px}";

  // A tag of its own, which no rule of the page names (a page's `div {...}` would reach
  // a div host, and through it the text inside); inside, `.box` starts from nothing.
  var host = document.createElement("souq-widget");
  host.id = "souq-widget";
  var root = host.attachShadow({ mode: "open" });
  // A constructed style sheet is not an inline style, so a page's CSP does not stop it.
  if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } else {
    var style = document.createElement("style");
    style.textContent = CSS;
    root.appendChild(style);
  }
  var box = document.createElement("div");
  box.className = "box";
  box.innerHTML =
    '<section class="panel" role="dialog" aria-labelledby="souq-title" hidden data-test="widget-panel">' +
    '<header><span class="t"><span id="souq-title">Chat with us</span><span class="op" data-test="widget-operator" aria-live="polite"></span></span>' +
    '<button type="button" class="close" aria-label="Close the chat" data-test="widget-close">&#x2715;</button></header>' +
    '<form class="pre" data-test="widget-prechat" hidden><p>Tell us who you are, if you like; both are optional.</p>' +
    '<label for="souq-name">Name</label><input id="souq-name" autocomplete="name" maxlength="200" data-test="widget-name">' +
    '<label for="souq-email">E-mail</label><input id="souq-email" type="email" autocomplete="email" data-test="widget-email">' +
    '<p class="info" data-test="widget-prechat-error" role="alert"></p>' +
    '<button class="primary" data-test="widget-start">Start the chat</button></form>' +
    '<ol class="log" aria-live="polite" aria-label="Messages" tabindex="0" data-test="widget-messages"></ol>' +
    '<div class="info typing" aria-live="polite" data-test="widget-typing"></div>' +
    '<div class="info status" role="status" data-test="widget-status"></div>' +
    '<form class="send" data-test="widget-composer"><label for="souq-input" class="vh">Message</label>' +
    '<input id="souq-input" autocomplete="off" placeholder="Write a message" data-test="widget-input">' +
    '<input class="file vh" type="file" tabindex="-1" aria-hidden="true" data-test="widget-file-input">' +
    '<button type="button" class="attach" aria-label="Send a file" data-test="widget-attach"><svg width="18" height="18" viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" d="M21 11l-8.5 8.5a5 5 0 0 1-7-7L14 4a3.5 3.5 0 0 1 5 5l-8.5 8.5a2 2 0 0 1-3-3L15 7"/></svg></button>' +
    '<button class="primary" data-test="widget-send">Send</button></form></section>' +
    '<button type="button" class="open" aria-expanded="false" data-test="widget-open">Chat' +
    '<span class="badge" data-test="widget-unread" hidden></span></button>';
  root.appendChild(box);
  function q(sel) { return root.querySelector(sel); }
  var panel = q(".panel"), log = q(".log"), form = q(".send"), input = q("#souq-input");
  var picker = q(".file"), openButton = q(".open"), badge = q(".badge"), pre = q(".pre");
  var status = q(".status"), typingLine = q(".typing"), opLine = q(".op");
  (document.body || document.documentElement).appendChild(host);

  function save() { if (state) localStorage.setItem(storeKey, JSON.stringify(state)); }
  function say(text) { status.textContent = text || ""; }

  function api(method, path, body, raw) {
    var init = { method: method, headers: {} };
    if (state && state.token) init.headers.authorization = "Bearer " + state.token;
    if (raw) init.body = raw;
    else if (body) { init.headers["content-type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch(http + path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (v) {
        if (!r.ok) throw new Error((v.error && v.error.message) || "HTTP " + r.status);
        return v;
      });
    });
  }

  /* ---- messages ---- */

  var TICKS = { sending: "sending\u2026", sent: "\u2713", received: "\u2713\u2713", read: "\u2713\u2713 read", failed: "not sent" };
  var TICK_NAMES = { sending: "sending", sent: "sent", received: "received", read: "read", failed: "not sent" };

  function tickOf(m) {
    if (m.failed) return "failed";
    if (!m.seq) return "sending";
    if (m.status === "read" || m.seq <= opRead) return "read";
    if (m.status === "received" || m.seq <= opReceived) return "received";
    return "sent";
  }

  function node(m) {
    var mine = m.author.kind === "customer";
    var li = document.createElement("li");
    li.className = "m" + (mine ? " me" : m.author.kind === "system" ? " sys" : "");
    li.setAttribute("data-test", "widget-message");
    li.setAttribute("data-author", m.author.kind);
    if (m.seq) li.setAttribute("data-seq", String(m.seq));
    if (m.local_id) li.setAttribute("data-local-id", m.local_id);
    var who = document.createElement("span");
    who.className = "vh";
    who.textContent = mine ? "You: " : m.author.kind === "operator" ? (operator ? operator.name : "Support") + ": " : "";
    li.appendChild(who);
    if (m.text) li.appendChild(document.createTextNode(m.text));
    if (m.file) li.appendChild(fileNode(m.file, mine));
    if (mine) {
      var t = document.createElement("span"), s = tickOf(m);
      t.className = "tick";
      t.setAttribute("data-test", "widget-tick");
      t.setAttribute("data-tick", s);
      t.setAttribute("aria-label", TICK_NAMES[s]);
      t.textContent = TICKS[s];
      li.appendChild(t);
    }
    return li;
  }

  function fileNode(f, mine) {
    // Only links of this server are followed.
    if (!f.url || f.url.charAt(0) !== "/" || f.url.charAt(1) === "/") {
      return document.createTextNode(" " + f.name + (f.url ? "" : " (removed)"));
    }
    var a = document.createElement("a");
    a.href = http + f.url; a.target = "_blank"; a.rel = "noopener";
    if (/^image\//.test(f.content_type)) {
      var img = document.createElement("img");
      img.src = http + f.url; img.alt = f.name;
      if (mine) img.style.marginLeft = "auto";
      a.appendChild(img);
    } else {
      a.textContent = f.name;
      a.style.display = "block";
    }
    return a;
  }

  function place(m) {
    var fresh = node(m), old = null;
    if (m.seq) old = log.querySelector('[data-seq="' + m.seq + '"]');
    if (!old && m.local_id) {
      var all = log.querySelectorAll("[data-local-id]");
      for (var i = 0; i < all.length; i++) if (all[i].getAttribute("data-local-id") === m.local_id) old = all[i];
    }
    var stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    if (old) old.remove();
    // Stored messages in seq order; unsent ones after them.
    var after = null;
    for (var n = log.lastElementChild; n; n = n.previousElementSibling) {
      var s = Number(n.getAttribute("data-seq") || Infinity);
      if (!m.seq || s <= m.seq) { after = n; break; }
    }
    if (after) after.after(fresh); else log.prepend(fresh);
    if (stick || !m.seq) log.scrollTop = log.scrollHeight;
  }

  function topSeq() {
    var top = 0;
    for (var s in bySeq) if (Number(s) > top) top = Number(s);
    return top;
  }

  function onMessage(m) {
    var fresh = !bySeq[m.seq];
    if (m.local_id && pending[m.local_id]) delete pending[m.local_id];
    bySeq[m.seq] = m;
    place(m);
    if (!fresh || m.author.kind !== "operator") return;
    typingLine.textContent = "";
    if (m.seq > (state.read || 0)) {
      if (isOpen() && !document.hidden) markRead();
      else setUnread(unread + 1);
    }
  }

  function setUnread(n) {
    unread = n;
    badge.hidden = !n;
    badge.textContent = String(n);
    openButton.setAttribute("aria-label", n ? "Chat, " + n + " unread" : "Chat");
  }

  function markRead() {
    var top = topSeq();
    setUnread(0);
    if (top > (state.read || 0) && send({ type: "read", chat_id: state.chat_id, seq: top })) {
      state.read = top;
      save();
    }
  }

  function refreshTicks() {
    var mine = log.querySelectorAll(".me[data-seq]");
    for (var i = 0; i < mine.length; i++) {
      var m = bySeq[mine[i].getAttribute("data-seq")];
      var t = mine[i].querySelector(".tick"), s = m && tickOf(m);
      if (s && t.getAttribute("data-tick") !== s) {
        t.setAttribute("data-tick", s);
        t.setAttribute("aria-label", TICK_NAMES[s]);
        t.textContent = TICKS[s];
      }
    }
  }

  /* ---- who has the chat ---- */

  function showOperator() {
    opLine.textContent = operator
      ? operator.name + (presence ? " \u00b7 " + presence : "")
      : "";
  }

  function loadChat() {
    return api("GET", "/v1/chats/" + state.chat_id).then(function (c) {
      operator = c.operator;
      finished = c.status === "finished";
      if (!operator) presence = null;
      showOperator();
    }).catch(function () {});
  }

  /* ---- the socket ---- */

  function send(frame) {
    if (!socket || socket.readyState !== 1 || !live) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearTimeout(retryTimer);
    var chat = state.chat_id;
    var s = new WebSocket(wsUrl + "?token=" + encodeURIComponent(state.token) + "&resume=" + chat + ":" + topSeq());
    socket = s;
    s.onmessage = function (event) {
      var f;
      try { f = JSON.parse(event.data); } catch (e) { return; }
      if (f.chat_id !== undefined && f.chat_id !== state.chat_id) return;
      if (f.type === "resumed") {
        live = true;
        retry = 0;
        say("");
        for (var l in pending) if (!pending[l].failed) send(pending[l].frame);
        if (isOpen()) markRead();
      } else if (f.type === "message") {
        onMessage(f.message);
      } else if (f.type === "ack") {
        var p = pending[f.local_id];
        if (p && !bySeq[f.seq]) {
          delete pending[f.local_id];
          p.seq = f.seq; p.status = "sent";
          bySeq[f.seq] = p;
          place(p);
        }
      } else if (f.type === "receipt" && f.member.kind === "operator") {
        opRead = Math.max(opRead, f.read_seq);
        opReceived = Math.max(opReceived, f.received_seq, f.read_seq);
        refreshTicks();
      } else if (f.type === "typing" && f.who.kind === "operator") {
        clearTimeout(theirTyping);
        typingLine.textContent = f.typing ? (operator ? operator.name : "Support") + " is typing\u2026" : "";
        if (f.typing) theirTyping = setTimeout(function () { typingLine.textContent = ""; }, 6000);
      } else if (f.type === "chat") {
        if (!operator || operator.id !== f.chat.operator_id || f.chat.status === "finished") loadChat();
        if (f.chat.status === "finished") say("This chat has ended. Write again to start a new one.");
      } else if (f.type === "presence") {
        if (operator && f.operator_id === operator.id) { presence = f.presence; showOperator(); }
      } else if (f.type === "queue") {
        say(f.position ? "You are number " + f.position + " in the queue" +
          (f.estimated_wait_secs ? ", about " + Math.max(1, Math.round(f.estimated_wait_secs / 60)) + " min." : ".") : "");
      } else if (f.type === "error") {
        if (f.id && pending[f.id]) { pending[f.id].failed = true; place(pending[f.id]); }
        say(f.message);
      }
    };
    s.onclose = function (e) {
      if (socket !== s) return;
      socket = null;
      live = false;
      if (e.code === 4001) { // the visitor's session ended: start again as a new visitor
        localStorage.removeItem(storeKey);
        state = null;
        say("Your chat session has ended.");
        return;
      }
      var delay = Math.min(30000, 500 * Math.pow(2, retry)) * (0.5 + Math.random() / 2);
      retry++;
      retryTimer = setTimeout(connect, delay);
    };
  }

  function start(details) {
    if (starting) return Promise.resolve();
    starting = true;
    var body = state ? { token: state.token } : details || {};
    return api("POST", "/v1/widget/" + encodeURIComponent(key) + "/visitors", body).then(function (v) {
      starting = false;
      var sameChat = state && state.chat_id === v.chat_id;
      state = { token: v.token, chat_id: v.chat_id, read: sameChat ? state.read : 0 };
      save();
      if (!sameChat) { bySeq = {}; log.textContent = ""; opRead = opReceived = 0; }
      pre.hidden = true;
      finished = false;
      loadChat();
      if (socket) { var old = socket; socket = null; old.onclose = null; old.close(); }
      connect();
    }, function (e) {
      starting = false;
      throw e;
    });
  }

  function isOpen() { return !panel.hidden; }

  /* ---- controls ---- */

  function toggle(open) {
    panel.hidden = !open;
    openButton.setAttribute("aria-expanded", String(open));
    if (!open) { openButton.focus(); return; }
    if (!state && prechat) { pre.hidden = false; q("#souq-name").focus(); return; }
    if (!socket) start().catch(function (e) { say(e.message); });
    markRead();
    input.focus();
  }

  openButton.addEventListener("click", function () { toggle(!isOpen()); });
  q(".close").addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });
  pre.addEventListener("submit", function (e) {
    e.preventDefault();
    var details = {}, name = q("#souq-name").value.trim(), email = q("#souq-email").value.trim();
    if (name) details.name = name;
    if (email) details.email = email;
    q("[data-test=widget-prechat-error]").textContent = "";
    start(details).then(function () { input.focus(); }, function (err) {
      q("[data-test=widget-prechat-error]").textContent = err.message;
    });
  });

  function localId() { return "w" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10); }

  function sendMessage(fields) {
    var l = localId();
    var m = { local_id: l, author: { kind: "customer" }, text: fields.text || "", file: fields.file || null,
      frame: { type: "send", id: l, chat_id: state.chat_id, local_id: l } };
    if (fields.text) m.frame.text = fields.text;
    if (fields.file) { m.frame.payload = "file"; m.frame.file_id = fields.file.id; }
    pending[l] = m;
    place(m);
    send(m.frame);
  }

  function ready() {
    // A finished chat takes no more messages: the visitor call opens a new one.
    if (state && !finished) return Promise.resolve();
    return start();
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    if (!state) { pre.hidden = false; q("#souq-name").focus(); return; }
    input.value = "";
    clearTimeout(typingStop);
    if (typingSent) { typingSent = 0; send({ type: "typing", chat_id: state.chat_id, typing: false }); }
    ready().then(function () { sendMessage({ text: text }); }, function (err) { say(err.message); input.value = text; });
  });
  input.addEventListener("input", function () {
    if (!state) return;
    var now = Date.now();
    if (now - typingSent > 2000 && send({ type: "typing", chat_id: state.chat_id, typing: true })) typingSent = now;
    clearTimeout(typingStop);
    typingStop = setTimeout(function () {
      typingSent = 0;
      send({ type: "typing", chat_id: state.chat_id, typing: false });
    }, 4000);
  });
  q(".attach").addEventListener("click", function () { picker.click(); });
  picker.addEventListener("change", function () {
    var file = picker.files[0];
    picker.value = "";
    if (!file || !state) return;
    say("Sending " + file.name + "\u2026");
    ready().then(function () {
      return api("POST", "/v1/chats/" + state.chat_id + "/files?name=" + encodeURIComponent(file.name), null, file);
    }).then(function (f) {
      say("");
      sendMessage({ file: f });
    }, function (err) { say(err.message); });
  });
  document.addEventListener("visibilitychange", function () { if (!document.hidden && isOpen() && state) markRead(); });
  window.addEventListener("online", function () { if (state && !socket) { retry = 0; connect(); } });

  if (!state) {
    api("GET", "/v1/widget/" + encodeURIComponent(key)).then(function (w) {
      prechat = !!w.prechat;
      host.setAttribute("data-prechat", String(prechat));
    }, function () {});
  }

  // A returning visitor's chat comes back at once: the whole chat is replayed from seq 0,
  // and operator messages after the read cursor kept here count as unread on the button.
  if (state) start().catch(function () {});
})();
