/* The demo page: embeds the widget for the domain whose widget key is in ?key=, as a
 * shop's page does with <script src="//HOST/widget.js" data-souq-key="KEY" async>. */
(function () {
  "use strict";
  var key = new URLSearchParams(location.search).get("key");
  var embed = document.getElementById("demo-embed");
  if (!key) {
    var form = document.getElementById("demo-form");
    form.hidden = false;
    // The page's policy lets no form submit itself; this one only changes the address.
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      location.search = "?key=" + encodeURIComponent(document.getElementById("demo-key").value.trim());
    });
    return;
  }
  embed.textContent = '<script src="//' + location.host + '/widget.js" data-souq-key="' + key + '" async></script>';
  document.getElementById("demo-ready").hidden = false;
  var s = document.createElement("script");
  s.src = "/widget.js";
  s.async = true;
  s.setAttribute("data-souq-key", key);
  document.body.appendChild(s);
})();
