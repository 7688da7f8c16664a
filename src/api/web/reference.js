/* The API reference, drawn from the two documents the server serves:
 * /schema/openapi.json (every REST route) and /schema/ws.json (every socket frame).
 * Everything is built with DOM calls and textContent: the documents are data, never HTML. */
(function () {
  "use strict";
  var out = document.getElementById("ref");
  var status = document.getElementById("ref-status");

  function el(tag, text, attrs) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) prose(e, String(text));
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }

  /* Text with `code` spans, as the documents write them. */
  function prose(into, text) {
    text.split("`").forEach(function (part, i) {
      into.appendChild(i % 2 ? el("code", null) : document.createTextNode(part));
      if (i % 2) into.lastChild.textContent = part;
    });
  }

  function refName(ref) { return ref.split("/").pop(); }

  /* A schema as a short, indented outline: type, required fields, enums, refs. */
  function outline(schema, indent, seen) {
    indent = indent || "";
    if (!schema || typeof schema !== "object") return "any";
    if (schema.$ref) return refName(schema.$ref);
    if (schema.oneOf) return schema.oneOf.map(function (s) { return outline(s, indent, seen); }).join(" | ");
    var type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
    if (schema.enum) type = schema.enum.map(function (v) { return JSON.stringify(v); }).join(" | ");
    if (schema.type === "array" || (Array.isArray(schema.type) && schema.type.indexOf("array") >= 0)) {
      type = "[" + outline(schema.items, indent, seen) + "]" + (Array.isArray(schema.type) ? " | null" : "");
    }
    if (schema.properties) {
      var req = schema.required || [];
      var lines = Object.keys(schema.properties).map(function (name) {
        var p = schema.properties[name];
        var line = indent + "  " + name + (req.indexOf(name) >= 0 ? "" : "?") + ": " + outline(p, indent + "  ", seen);
        if (p.description) line += "  // " + p.description.split("\n")[0];
        return line;
      });
      type = (Array.isArray(schema.type) && schema.type.indexOf("null") >= 0 ? "null | " : "") +
        "{\n" + lines.join("\n") + "\n" + indent + "}";
    }
    return type;
  }

  function schemaBlock(label, schema) {
    var d = el("details");
    d.appendChild(el("summary", label));
    d.appendChild(el("pre")).textContent = outline(schema);
    return d;
  }

  function slug(s) { return s.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, ""); }

  function operation(path, method, op) {
    var s = el("section", null, { id: slug(method + " " + path), "data-test": "reference-operation" });
    var h = el("h3");
    h.appendChild(el("span", method.toUpperCase(), { "class": "method" }));
    h.appendChild(el("code", path));
    s.appendChild(h);
    if (op.summary) s.appendChild(el("p", op.summary));
    if (op.description) s.appendChild(el("p", op.description));
    if (op.security && op.security.length === 0) s.appendChild(el("p", "No token needed."));
    var params = op.parameters || [];
    if (params.length) {
      var t = el("table");
      var head = el("tr");
      ["Parameter", "In", "Type", "Description"].forEach(function (c) { head.appendChild(el("th", c, { scope: "col" })); });
      t.appendChild(head);
      params.forEach(function (p) {
        var r = el("tr");
        r.appendChild(el("td", p.name + (p.required ? "" : "?")));
        r.appendChild(el("td", p.in));
        r.appendChild(el("td", outline(p.schema)));
        r.appendChild(el("td", p.description || ""));
        t.appendChild(r);
      });
      s.appendChild(t);
    }
    var body = op.requestBody && op.requestBody.content;
    if (body) {
      Object.keys(body).forEach(function (type) {
        s.appendChild(schemaBlock("Request body (" + type + ")", body[type].schema));
      });
    }
    var ul = el("ul");
    Object.keys(op.responses || {}).forEach(function (code) {
      var r = op.responses[code], li = el("li");
      li.appendChild(el("strong", code + " "));
      prose(li, r.description || "");
      var json = r.content && r.content["application/json"];
      if (json && json.schema) li.appendChild(schemaBlock("Body", json.schema));
      ul.appendChild(li);
    });
    s.appendChild(el("h4", "Responses"));
    s.appendChild(ul);
    return s;
  }

  function rest(doc) {
    var part = el("section", null, { id: "rest" });
    part.appendChild(el("h2", "REST"));
    if (doc.info && doc.info.description) doc.info.description.split("\n\n").forEach(function (para) {
      part.appendChild(el("p", para));
    });
    var byTag = {};
    Object.keys(doc.paths).forEach(function (path) {
      Object.keys(doc.paths[path]).forEach(function (method) {
        var op = doc.paths[path][method];
        if (typeof op !== "object" || !op.responses) return;
        var tag = (op.tags && op.tags[0]) || "other";
        (byTag[tag] = byTag[tag] || []).push([path, method, op]);
      });
    });
    var nav = el("nav", null, { "aria-label": "Operations" }), list = el("ul");
    nav.appendChild(list);
    part.appendChild(nav);
    Object.keys(byTag).forEach(function (tag) {
      var group = el("section", null, { id: "tag-" + slug(tag) });
      group.appendChild(el("h2", tag));
      var li = el("li"), a = el("a", tag, { href: "#tag-" + slug(tag) });
      li.appendChild(a);
      li.appendChild(document.createTextNode(" (" + byTag[tag].length + ")"));
      list.appendChild(li);
      byTag[tag].forEach(function (o) { group.appendChild(operation(o[0], o[1], o[2])); });
      part.appendChild(group);
    });
    part.appendChild(components("REST schemas", doc, "schema-"));
    return part;
  }

  function components(title, doc, prefix) {
    var part = el("section", null, { id: prefix + "components" });
    part.appendChild(el("h2", title));
    var schemas = (doc.components && doc.components.schemas) || {};
    Object.keys(schemas).forEach(function (name) {
      var s = schemas[name];
      var d = el("details", null, { id: prefix + name });
      d.appendChild(el("summary", name + (s.description ? ": " + s.description.split("\n")[0] : "")));
      d.appendChild(el("pre")).textContent = outline(s);
      part.appendChild(d);
    });
    return part;
  }

  function frames(doc) {
    var part = el("section", null, { id: "ws" });
    part.appendChild(el("h2", "WebSocket: GET /v1/ws"));
    if (doc.description) part.appendChild(el("p", doc.description));
    [["client", "Frames a client sends"], ["server", "Frames the server sends"]].forEach(function (side) {
      part.appendChild(el("h3", side[1]));
      Object.keys(doc[side[0]] || {}).forEach(function (name) {
        var f = doc[side[0]][name];
        var s = el("section", null, { id: "ws-" + side[0] + "-" + name, "data-test": "reference-frame" });
        s.appendChild(el("h4")).appendChild(el("code", name));
        if (f.description) s.appendChild(el("p", f.description));
        s.appendChild(schemaBlock("Fields", f));
        part.appendChild(s);
      });
    });
    part.appendChild(components("Frame schemas", doc, "frame-schema-"));
    return part;
  }

  function get(path) {
    return fetch(path).then(function (r) {
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }

  Promise.all([get("/schema/openapi.json"), get("/schema/ws.json")]).then(function (docs) {
    var toc = el("nav", null, { "aria-label": "Parts" }), ul = el("ul");
    [["#rest", "REST"], ["#schema-components", "REST schemas"], ["#ws", "WebSocket frames"]].forEach(function (l) {
      var li = el("li");
      li.appendChild(el("a", l[1], { href: l[0] }));
      ul.appendChild(li);
    });
    toc.appendChild(ul);
    out.appendChild(toc);
    out.appendChild(rest(docs[0]));
    out.appendChild(frames(docs[1]));
    status.textContent = Object.keys(docs[0].paths).length + " paths, " +
      (Object.keys(docs[1].client).length + Object.keys(docs[1].server).length) + " frames.";
    if (location.hash) {
      var target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  }).catch(function (e) {
    status.textContent = "Could not load the documents: " + e.message;
  });
})();
