/* souq operator console: one page, no build step, no framework.
 *
 * State lives in plain maps; the DOM is updated from it. Messages are kept per chat keyed by
 * seq (the chat's one order), and a message of ours not yet stored is kept by its local_id
 * until its ack or its message frame names its seq: so a message is shown once whatever
 * order the ack, the frame and a resume catch-up arrive in. */
(function () {
  "use strict";

  var TOKEN_KEY = "souq-console-token";
  var PAGE = 30;

  var token = null;
  var me = null; // the operator, from GET /v1/me
  var socket = null;
  var retry = 0, retryTimer = null, live = false;
  var chats = new Map(); // id -> chat (as GET /v1/chats gives it)
  var threads = new Map(); // id -> {bySeq: Map, pending: Map, notes: Map, hasMore, loading, customerRead, customerReceived, readSent}
  var openId = null;
  var filter = "all";
  var typingSent = 0, typingStop = null, theirTypingTimer = null;
  var audio = null;

  function $(id) { return document.getElementById(id); }
  function say(text) { $("status").textContent = text; }

  /* ---------- REST ---------- */

  function api(method, path, body) {
    var init = { method: method, headers: { authorization: "Bearer " + token } };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      if (r.status === 204) return null;
      return r.json().catch(function () { return {}; }).then(function (v) {
        if (r.status === 401) signedOut("Your session has ended. Sign in again.");
        if (!r.ok) {
          var e = new Error((v.error && v.error.message) || ("HTTP " + r.status));
          e.status = r.status;
          throw e;
        }
        return v;
      });
    });
  }

  function failed(e) { say("Could not do that: " + e.message); }

  /* ---------- sign-in ---------- */

  function tokenFromLink() {
    var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!m) return null;
    // The token must not stay in the address bar, the history or a bookmark.
    history.replaceState(null, "", location.pathname + location.search);
    return decodeURIComponent(m[1]);
  }

  function signIn(t) {
    token = t;
    $("sign-in-error").textContent = "";
    return api("GET", "/v1/me").then(function (v) {
      if (v.kind !== "operator" || !v.operator) {
        throw new Error("This token is not an operator's. Ask for an operator sign-in link.");
      }
      localStorage.setItem(TOKEN_KEY, t);
      me = v.operator;
      $("sign-in").hidden = true;
      $("desk").hidden = false;
      $("signed-in-controls").hidden = false;
      var who = $("me");
      who.hidden = false;
      who.textContent = me.name || me.email;
      who.setAttribute("data-operator-id", String(me.id));
      $("presence").value = me.presence;
      loadChats();
      connect();
    }).catch(function (e) {
      if (token) signedOut(e.status === 401 ? "That token is not valid (any more)." : e.message);
    });
  }

  function signedOut(why) {
    token = null;
    me = null;
    localStorage.removeItem(TOKEN_KEY);
    clearTimeout(retryTimer);
    if (socket) { socket.onclose = null; socket.close(1000); socket = null; }
    setConnection("offline");
    chats.clear(); threads.clear(); openId = null;
    $("chats").textContent = "";
    $("desk").hidden = true;
    $("signed-in-controls").hidden = true;
    $("me").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = why || "";
    $("token").focus();
  }

  /* ---------- the chat list ---------- */

  var QUERIES = { all: "", mine: "&operator_id=me", unassigned: "&operator_id=none", snoozed: "&snoozed=true" };

  function inFilter(c) {
    if (filter === "mine") return !!(c.operator && me && c.operator.id === me.id);
    if (filter === "unassigned") return !c.operator && c.status !== "finished";
    if (filter === "snoozed") return !!c.snoozed;
    return true;
  }

  function loadChats() {
    return api("GET", "/v1/chats?limit=100" + QUERIES[filter]).then(function (page) {
      page.items.forEach(function (c) { chats.set(c.id, c); });
      renderList();
    }).catch(failed);
  }

  function fetchChat(id) {
    return api("GET", "/v1/chats/" + id).then(function (c) {
      chats.set(c.id, c);
      renderList();
      if (c.id === openId) renderHeader();
      return c;
    });
  }

  function preview(m) {
    if (!m) return "No messages yet";
    if (m.payload === "file") return "File: " + (m.file ? m.file.name : "");
    return m.text;
  }

  function renderList() {
    var list = $("chats");
    var shown = Array.from(chats.values()).filter(inFilter).sort(function (a, b) {
      return b.last_activity_at - a.last_activity_at || b.id - a.id;
    });
    var had = document.activeElement && document.activeElement.closest("#chats")
      ? document.activeElement.getAttribute("data-chat-id") : null;
    list.textContent = "";
    shown.forEach(function (c) {
      var li = document.createElement("li");
      var b = document.createElement("button");
      b.type = "button";
      b.setAttribute("data-test", "chat-item");
      b.setAttribute("data-chat-id", String(c.id));
      b.setAttribute("data-status", c.status);
      if (c.id === openId) b.setAttribute("aria-current", "true");
      var name = el("span", "name", c.customer ? c.customer.name : "Customer " + c.customer_id);
      name.setAttribute("data-test", "chat-name");
      b.appendChild(name);
      var unread = el("span", "badge", String(c.unread || 0));
      unread.setAttribute("data-test", "chat-unread");
      unread.setAttribute("aria-label", (c.unread || 0) + " unread");
      unread.hidden = !c.unread;
      b.appendChild(unread);
      var last = el("span", "last", preview(c.last_message));
      last.setAttribute("data-test", "chat-last");
      b.appendChild(last);
      var status = el("span", "status", c.status + (c.snoozed ? ", snoozed" : "") +
        (c.operator ? ", " + c.operator.name : ""));
      status.setAttribute("data-test", "chat-status");
      b.appendChild(status);
      b.addEventListener("click", function () { openChat(c.id); });
      li.appendChild(b);
      list.appendChild(li);
    });
    $("no-chats").hidden = shown.length > 0;
    if (had) {
      var again = list.querySelector('[data-chat-id="' + had + '"]');
      if (again) again.focus();
    }
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* ---------- one chat ---------- */

  function thread(id) {
    var t = threads.get(id);
    if (!t) {
      t = { bySeq: new Map(), pending: new Map(), notes: new Map(), hasMore: false, loaded: false,
        loading: false, customerRead: 0, customerReceived: 0, readSent: 0 };
      threads.set(id, t);
    }
    return t;
  }

  function openChat(id) {
    openId = id;
    $("no-chat").hidden = true;
    $("chat").hidden = false;
    $("desk").classList.add("open");
    $("view").setAttribute("data-chat-id", String(id));
    $("typing").textContent = "";
    $("log").textContent = "";
    renderHeader();
    renderList();
    var t = thread(id);
    var log = $("log");
    log.setAttribute("aria-busy", "true");
    var history = t.loaded ? Promise.resolve() : loadHistory(id);
    var notes = api("GET", "/v1/chats/" + id + "/notes?limit=100").then(function (page) {
      page.items.forEach(function (n) { t.notes.set(n.id, n); });
    });
    Promise.all([history, notes.catch(function () {})]).then(function () {
      if (openId !== id) return;
      t.bySeq.forEach(function (m) { place(id, m); });
      t.pending.forEach(function (m) { place(id, m); });
      t.notes.forEach(function (n) { placeNote(id, n); });
      log.setAttribute("aria-busy", "false");
      log.scrollTop = log.scrollHeight;
      markRead(id);
      // A message that came while the history was on its way was not kept: the server
      // replays this chat from the newest seq we have (one shown twice is keyed by seq).
      if (live) resumeFrame(id);
    }).catch(failed);
    $("chat-title").focus();
  }

  function loadHistory(id, before) {
    var t = thread(id);
    if (t.loading) return Promise.resolve();
    t.loading = true;
    var q = "/v1/chats/" + id + "/messages?limit=" + PAGE + (before ? "&before=" + before : "");
    return api("GET", q).then(function (page) {
      t.loading = false;
      t.loaded = true;
      if (!before || page.items.length) t.hasMore = page.has_more;
      page.items.forEach(function (m) { keep(id, m); });
      if (openId === id) $("older").hidden = !t.hasMore;
    }, function (e) { t.loading = false; throw e; });
  }

  function loadOlder() {
    var id = openId, t = thread(id);
    if (!t.hasMore || t.loading) return;
    var lowest = Math.min.apply(null, Array.from(t.bySeq.keys()));
    var log = $("log"), fromBottom = log.scrollHeight - log.scrollTop;
    log.setAttribute("aria-busy", "true");
    loadHistory(id, lowest).then(function () {
      if (openId !== id) return;
      t.bySeq.forEach(function (m) { if (m.seq < lowest) place(id, m); });
      log.scrollTop = log.scrollHeight - fromBottom;
      log.setAttribute("aria-busy", "false");
    }).catch(failed);
  }

  /* Keeps a stored message, dropping the pending copy it answers. */
  function keep(chatId, m) {
    var t = thread(chatId);
    if (m.local_id && t.pending.has(m.local_id)) {
      t.pending.delete(m.local_id);
      var old = document.querySelector('#log [data-local-id="' + cssEscape(m.local_id) + '"]:not([data-seq])');
      if (old) old.remove();
    }
    t.bySeq.set(m.seq, m);
  }

  function cssEscape(s) { return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, "\\$&"); }

  function isOurs(m) { return m.author.kind === "operator"; }

  function tickOf(chatId, m) {
    if (m.failed) return "failed";
    if (!m.seq) return "sending";
    var t = thread(chatId);
    if (m.status === "read" || m.seq <= t.customerRead) return "read";
    if (m.status === "received" || m.seq <= t.customerReceived) return "received";
    return "sent";
  }

  var TICK_TEXT = { sending: "sending…", sent: "✓ sent", received: "✓✓ received", read: "✓✓ read", failed: "not sent" };

  function messageNode(chatId, m) {
    var li = el("li", "msg");
    li.setAttribute("data-test", "message");
    if (m.seq) li.setAttribute("data-seq", String(m.seq));
    if (m.local_id) li.setAttribute("data-local-id", m.local_id);
    li.setAttribute("data-author", m.author.kind);
    if (m.author.kind === "system") li.classList.add("system");
    if (isOurs(m)) li.classList.add("mine");
    var by = m.author.kind === "customer" ? customerName(chatId)
      : m.author.kind === "operator" ? (me && m.author.id === me.id ? "You" : "Operator " + m.author.id) : "Notice";
    li.appendChild(el("span", "by", by));
    if (m.text) li.appendChild(el("span", "text", m.text));
    if (m.file) li.appendChild(fileNode(m.file));
    if (isOurs(m)) {
      var tick = el("span", "tick");
      tick.setAttribute("data-test", "tick");
      var state = tickOf(chatId, m);
      tick.setAttribute("data-tick", state);
      tick.textContent = TICK_TEXT[state];
      li.appendChild(tick);
    }
    li.setAttribute("data-order", String(orderOf(m)));
    return li;
  }

  function fileNode(f) {
    if (!f.url) return el("span", "file", f.name + " (removed)");
    // Only links of this server are followed.
    if (f.url.charAt(0) !== "/" || f.url.charAt(1) === "/") return el("span", "file", f.name);
    if (/^image\//.test(f.content_type)) {
      var a = document.createElement("a");
      a.href = f.url; a.target = "_blank"; a.rel = "noopener";
      var img = document.createElement("img");
      img.src = f.url; img.alt = f.name;
      if (f.image_width && f.image_height) { img.width = f.image_width; img.height = f.image_height; }
      a.appendChild(img);
      return a;
    }
    var link = el("a", "file", f.name);
    link.href = f.url; link.target = "_blank"; link.rel = "noopener";
    return link;
  }

  function customerName(chatId) {
    var c = chats.get(chatId);
    return c && c.customer ? c.customer.name : "Customer";
  }

  /* Where an item sorts in the log: messages by seq (their times agree with it), notes by
     time among them, unsent messages last. */
  function orderOf(m) {
    if (!m.seq) return Number.MAX_SAFE_INTEGER;
    return m.created_at * 1000 + Math.min(m.seq % 1000, 999);
  }

  function insertSorted(node) {
    var log = $("log"), order = Number(node.getAttribute("data-order"));
    var after = null;
    for (var n = log.lastElementChild; n; n = n.previousElementSibling) {
      if (Number(n.getAttribute("data-order")) <= order) { after = n; break; }
    }
    if (after) after.after(node); else log.prepend(node);
  }

  function place(chatId, m) {
    if (chatId !== openId) return;
    var log = $("log");
    var node = messageNode(chatId, m);
    var old = m.seq ? log.querySelector('[data-seq="' + m.seq + '"]') : null;
    if (!old && m.local_id) old = log.querySelector('[data-local-id="' + cssEscape(m.local_id) + '"]');
    if (old) {
      // A pending message that got its seq keeps its place until the stored one sorts it.
      if (old.getAttribute("data-order") === node.getAttribute("data-order")) { old.replaceWith(node); return; }
      old.remove();
    }
    var stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    insertSorted(node);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function placeNote(chatId, n) {
    if (chatId !== openId) return;
    var log = $("log");
    var li = el("li", "note");
    li.setAttribute("data-test", "note");
    li.setAttribute("data-note-id", String(n.id));
    li.setAttribute("data-order", String(n.created_at * 1000 + 999));
    li.appendChild(el("span", "by", "Private note by " +
      (me && n.operator_id === me.id ? "you" : "operator " + n.operator_id) + " (the customer does not see it)"));
    li.appendChild(el("span", "text", n.text));
    var old = log.querySelector('[data-note-id="' + n.id + '"]');
    if (old) old.remove();
    insertSorted(li);
    log.scrollTop = log.scrollHeight;
  }

  function refreshTicks(chatId) {
    if (chatId !== openId) return;
    $("log").querySelectorAll(".msg.mine[data-seq]").forEach(function (li) {
      var m = thread(chatId).bySeq.get(Number(li.getAttribute("data-seq")));
      if (!m) return;
      var tick = li.querySelector("[data-tick]"), state = tickOf(chatId, m);
      if (tick.getAttribute("data-tick") !== state) {
        tick.setAttribute("data-tick", state);
        tick.textContent = TICK_TEXT[state];
      }
    });
  }

  function renderHeader() {
    var c = chats.get(openId);
    if (!c) return;
    $("chat-title").textContent = c.customer ? c.customer.name : "Chat " + c.id;
    $("chat-meta").textContent = c.status + (c.snoozed ? ", snoozed" : "") +
      (c.operator ? " · with " + (me && c.operator.id === me.id ? "you" : c.operator.name) : " · unassigned");
    var finished = c.status === "finished";
    $("take").hidden = !!c.operator || finished;
    $("unassign").hidden = !c.operator || finished;
    $("snooze").hidden = !!c.snoozed || finished;
    $("wake").hidden = !c.snoozed;
    $("finish").hidden = finished;
    $("transfer").hidden = finished;
    $("composer-input").disabled = finished;
  }

  function markRead(chatId) {
    if (chatId !== openId || document.hidden) return;
    var t = thread(chatId), top = topSeq(t);
    if (top > t.readSent && sendFrame({ type: "read", chat_id: chatId, seq: top })) t.readSent = top;
    var c = chats.get(chatId);
    if (c && c.unread) { c.unread = 0; renderList(); }
  }

  /* ---------- sending ---------- */

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    var h = Array.from(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function sendFrame(frame) {
    if (!socket || socket.readyState !== 1 || !live) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  /* A send waits in its chat's pending map until stored; after a reconnect every pending
     send goes again with its local_id, which the server answers with the first message. */
  function send(chatId, fields) {
    var local = uuid();
    var m = { chat_id: chatId, local_id: local, author: { kind: "operator", id: me.id },
      payload: fields.payload || "text", text: fields.text || "", file: fields.file || null,
      created_at: Date.now(), frame: { type: "send", id: local, chat_id: chatId, local_id: local } };
    if (fields.payload) { m.frame.payload = fields.payload; m.frame.file_id = fields.file.id; }
    if (fields.text) m.frame.text = fields.text;
    thread(chatId).pending.set(local, m);
    place(chatId, m);
    sendFrame(m.frame);
  }

  function resendPending() {
    threads.forEach(function (t) {
      t.pending.forEach(function (m) { if (!m.seq && !m.failed) sendFrame(m.frame); });
    });
  }

  function typing(on) {
    if (!openId) return;
    var now = Date.now();
    if (on && now - typingSent < 2000) return;
    typingSent = on ? now : 0;
    sendFrame({ type: "typing", chat_id: openId, typing: on });
  }

  /* ---------- the socket ---------- */

  function setConnection(state) {
    var c = $("connection");
    c.setAttribute("data-state", state);
    c.textContent = state === "live" ? "connected" : state === "connecting" ? "connecting…" : "offline";
  }

  function resumeQuery() {
    var parts = [];
    threads.forEach(function (t, id) {
      if (t.loaded) parts.push(id + ":" + topSeq(t));
    });
    return parts.join(",");
  }

  function topSeq(t) {
    var top = 0;
    t.bySeq.forEach(function (m, seq) { if (seq > top) top = seq; });
    return top;
  }

  function resumeFrame(chatId) {
    var chatsAt = {};
    chatsAt[String(chatId)] = topSeq(thread(chatId));
    sendFrame({ type: "resume", id: "r" + chatId, chats: chatsAt });
  }

  function connect() {
    if (!token) return;
    clearTimeout(retryTimer);
    setConnection("connecting");
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws?token=" +
      encodeURIComponent(token);
    var resume = resumeQuery();
    if (resume) url += "&resume=" + resume;
    var s = new WebSocket(url);
    socket = s;
    s.onmessage = function (e) {
      var f;
      try { f = JSON.parse(e.data); } catch (err) { return; }
      onFrame(f);
    };
    s.onclose = function (e) {
      if (socket !== s) return;
      socket = null;
      live = false;
      setConnection("offline");
      if (e.code === 4001) { signedOut("Your session has ended. Sign in again."); return; }
      // Back off, with jitter, so that a restarted server is not met by every console at once.
      var delay = Math.min(30000, 500 * Math.pow(2, retry)) * (0.5 + Math.random() / 2);
      retry++;
      retryTimer = setTimeout(connect, delay);
    };
  }

  function onFrame(f) {
    switch (f.type) {
      case "ready":
        break;
      case "resumed":
        if (f.id) break; // one chat caught up after its history loaded
        live = true;
        retry = 0;
        setConnection("live");
        resendPending();
        // What changed while away: counts, last messages, new chats.
        loadChats();
        api("GET", "/v1/me").then(function (v) { if (v.operator) $("presence").value = v.operator.presence; }).catch(function () {});
        if (openId) markRead(openId);
        break;
      case "message": onMessage(f.chat_id, f.message); break;
      case "ack": onAck(f); break;
      case "receipt": onReceipt(f); break;
      case "chat":
        if (chats.has(f.chat.id)) {
          var c = chats.get(f.chat.id), was = c.operator ? c.operator.id : null;
          c.status = f.chat.status;
          c.last_seq = f.chat.last_seq;
          if (was !== f.chat.operator_id || f.event === "created") fetchChat(f.chat.id).catch(function () {});
          else { renderList(); if (f.chat.id === openId) renderHeader(); }
        } else {
          fetchChat(f.chat.id).catch(function () {});
        }
        break;
      case "typing":
        if (f.chat_id === openId && f.who.kind === "customer") {
          clearTimeout(theirTypingTimer);
          $("typing").textContent = f.typing ? customerName(f.chat_id) + " is typing…" : "";
          if (f.typing) theirTypingTimer = setTimeout(function () { $("typing").textContent = ""; }, 6000);
        }
        break;
      case "presence":
        if (me && f.operator_id === me.id) $("presence").value = f.presence;
        break;
      case "note":
        var t = thread(f.chat_id);
        t.notes.set(f.note.id, f.note);
        placeNote(f.chat_id, f.note);
        break;
      case "notification":
        break;
      case "error":
        onError(f);
        break;
    }
  }

  function onMessage(chatId, m) {
    var t = thread(chatId);
    var fresh = !t.bySeq.has(m.seq);
    if (t.loaded) { keep(chatId, m); place(chatId, m); }
    if (m.author.kind === "customer" && openId === chatId) {
      clearTimeout(theirTypingTimer);
      $("typing").textContent = "";
    }
    var c = chats.get(chatId);
    if (!c) { fetchChat(chatId).catch(function () {}); }
    else if (!c.last_message || c.last_message.seq < m.seq) {
      c.last_message = m;
      c.last_seq = m.seq;
      c.last_activity_at = Math.max(c.last_activity_at, m.created_at);
      if (fresh && m.author.kind === "customer") {
        if (c.snoozed) c.snoozed = false;
        if (openId !== chatId || document.hidden) c.unread = (c.unread || 0) + 1;
      }
      renderList();
    }
    if (fresh && m.author.kind === "customer") {
      if (openId === chatId) markRead(chatId);
      if (document.hidden) alertNew(chatId, m);
    }
  }

  function onAck(f) {
    var t = thread(f.chat_id), m = t.pending.get(f.local_id);
    if (!m) return;
    if (t.bySeq.has(f.seq)) { t.pending.delete(f.local_id); return; }
    m.seq = f.seq;
    m.id = f.message_id;
    m.status = "sent";
    t.pending.delete(f.local_id);
    t.bySeq.set(f.seq, m);
    place(f.chat_id, m);
  }

  function onReceipt(f) {
    var t = thread(f.chat_id);
    if (f.member.kind === "customer") {
      t.customerRead = Math.max(t.customerRead, f.read_seq);
      t.customerReceived = Math.max(t.customerReceived, f.received_seq, f.read_seq);
      refreshTicks(f.chat_id);
    } else if (me && f.member.kind === "operator" && f.member.id === me.id) {
      // Read in another tab or on the phone.
      var c = chats.get(f.chat_id);
      if (c && c.unread && f.read_seq >= c.last_seq) { c.unread = 0; renderList(); }
    }
  }

  function onError(f) {
    var found = false;
    threads.forEach(function (t, chatId) {
      var m = f.id && t.pending.get(f.id);
      if (m) { m.failed = true; found = true; place(chatId, m); }
    });
    say((found ? "A message was not sent: " : "") + f.message);
  }

  /* ---------- alerts ---------- */

  function alertNew(chatId, m) {
    beep();
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    var n = new Notification("New message from " + customerName(chatId), {
      body: m.text || (m.file ? m.file.name : ""), tag: "souq-chat-" + chatId
    });
    n.onclick = function () { window.focus(); openChat(chatId); n.close(); };
  }

  function beep() {
    if (!audio) return;
    var o = audio.createOscillator(), g = audio.createGain();
    o.frequency.value = 880;
    g.gain.setValueAtTime(0.15, audio.currentTime);
    g.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.2);
    o.connect(g); g.connect(audio.destination);
    o.start(); o.stop(audio.currentTime + 0.2);
  }

  function enableAlerts() {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (Ctx && !audio) audio = new Ctx();
    if (audio && audio.state === "suspended") audio.resume();
    var done = function (p) {
      $("alerts").textContent = p === "granted" ? "Alerts on" : "Sound only";
      $("alerts").setAttribute("aria-pressed", "true");
      say(p === "granted" ? "You will be alerted of new messages while this tab is hidden."
        : "Notifications are blocked; a sound plays for new messages while this tab is hidden.");
    };
    if ("Notification" in window && Notification.permission === "default") {
      Notification.requestPermission().then(done);
    } else {
      done("Notification" in window ? Notification.permission : "denied");
    }
  }

  /* ---------- controls ---------- */

  function act(path, method, body) {
    var id = openId;
    return api(method || "POST", "/v1/chats/" + id + path, body).then(function (c) {
      if (c && c.id) { chats.set(c.id, c); renderList(); renderHeader(); }
      else fetchChat(id);
    }).catch(failed);
  }

  function wire() {
    $("sign-in-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var t = $("token").value.trim();
      $("token").value = "";
      if (t) signIn(t);
    });
    $("sign-out").addEventListener("click", function () {
      var t = token;
      api("POST", "/v1/auth/sign-out").catch(function () {}).then(function () {
        if (token === t) signedOut("Signed out.");
      });
    });
    $("presence").addEventListener("change", function () {
      api("PUT", "/v1/me/presence", { presence: this.value }).then(function () {
        say("You are " + $("presence").value + ".");
      }).catch(failed);
    });
    $("alerts").addEventListener("click", enableAlerts);
    $("filter").addEventListener("change", function () {
      filter = this.value;
      renderList();
      loadChats();
    });
    $("back").addEventListener("click", function () {
      $("desk").classList.remove("open");
      var item = document.querySelector('#chats [data-chat-id="' + openId + '"]');
      if (item) item.focus();
    });
    $("take").addEventListener("click", function () { act("/take"); });
    $("unassign").addEventListener("click", function () { act("/unassign"); });
    $("finish").addEventListener("click", function () { act("/finish"); });
    $("snooze").addEventListener("click", function () { act("/snooze", "POST", {}); });
    $("wake").addEventListener("click", function () { act("/snooze", "DELETE"); });
    $("transfer-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var body = {};
      body[$("transfer-kind").value] = Number($("transfer-id").value);
      var note = $("transfer-note").value.trim();
      if (note) body.note = note;
      act("/transfer", "POST", body).then(function () {
        $("transfer").open = false;
        $("transfer-id").value = ""; $("transfer-note").value = "";
      });
    });
    $("older").addEventListener("click", loadOlder);
    $("log").addEventListener("scroll", function () { if (this.scrollTop < 40) loadOlder(); });
    var input = $("composer-input");
    $("composer").addEventListener("submit", function (e) {
      e.preventDefault();
      var text = input.value;
      if (!openId || !text.trim()) return;
      input.value = "";
      clearTimeout(typingStop);
      typing(false);
      send(openId, { text: text });
    });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    input.addEventListener("input", function () {
      typing(true);
      clearTimeout(typingStop);
      typingStop = setTimeout(function () { typing(false); }, 4000);
    });
    $("attach").addEventListener("click", function () { $("file").click(); });
    $("file").addEventListener("change", function () {
      var file = this.files[0], chatId = openId;
      this.value = "";
      if (!file || !chatId) return;
      var form = new FormData();
      form.append("file", file, file.name);
      say("Uploading " + file.name + "…");
      api("POST", "/v1/chats/" + chatId + "/files", form).then(function (f) {
        say("");
        send(chatId, { payload: "file", file: f });
      }).catch(failed);
    });
    var search = $("canned-search"), searchTimer = null;
    var findCanned = function () {
      api("GET", "/v1/canned-responses?q=" + encodeURIComponent(search.value.trim())).then(function (v) {
        var list = $("canned-list");
        list.textContent = "";
        v.items.slice(0, 20).forEach(function (c) {
          var li = document.createElement("li"), b = el("button", "", "/" + c.short_code + ": " + c.text);
          b.type = "button";
          b.setAttribute("data-test", "canned-item");
          b.setAttribute("data-canned-id", String(c.id));
          b.addEventListener("click", function () {
            api("POST", "/v1/canned-responses/" + c.id + "/render", { chat_id: openId }).then(function (r) {
              input.value = r.text;
              $("canned-box").open = false;
              input.focus();
            }).catch(failed);
          });
          li.appendChild(b);
          list.appendChild(li);
        });
        if (!v.items.length) list.appendChild(el("li", "empty", "Nothing found."));
      }).catch(failed);
    };
    search.addEventListener("input", function () { clearTimeout(searchTimer); searchTimer = setTimeout(findCanned, 200); });
    $("canned-box").addEventListener("toggle", function () { if (this.open) findCanned(); });
    $("note-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var text = $("note-input").value, chatId = openId;
      if (!chatId || !text.trim()) return;
      api("POST", "/v1/chats/" + chatId + "/notes", { text: text }).then(function (n) {
        $("note-input").value = "";
        thread(chatId).notes.set(n.id, n);
        placeNote(chatId, n);
      }).catch(failed);
    });
    document.addEventListener("visibilitychange", function () { if (!document.hidden && openId) markRead(openId); });
    window.addEventListener("online", function () { if (token && !socket) { retry = 0; connect(); } });
  }

  wire();
  var t = tokenFromLink() || localStorage.getItem(TOKEN_KEY);
  if (t) signIn(t); else signedOut("");
})();
