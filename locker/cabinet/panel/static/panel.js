// Live updates of the front panel (server-sent events), the countdown, the on-screen keypad.
// The page is complete without this script; it only keeps it current.
(function () {
  "use strict";
  var msg = document.getElementById("message");
  var door = document.getElementById("door");
  var deadline = null;  // performance.now() at which the countdown reaches 0

  function setData(name, value) {
    if (value) { msg.setAttribute("data-" + name, value); } else { msg.removeAttribute("data-" + name); }
  }

  function tick() {
    var span = document.getElementById("countdown");
    if (deadline === null || !span) { return; }
    var left = Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
    if (span.textContent !== String(left)) { span.textContent = String(left); }
  }

  function apply(d) {
    if (d.lang !== document.documentElement.lang) { window.location.reload(); return; }
    msg.setAttribute("data-state", d.state);
    setData("compartment", d.compartment);
    setData("reason", d.reason);
    if (d.seconds !== null) {
      var span = document.createElement("span");
      span.id = "countdown";
      span.textContent = String(d.seconds);
      msg.replaceChildren(document.createTextNode(d.before), span, document.createTextNode(d.after));
      deadline = performance.now() + d.seconds * 1000;
    } else {
      msg.textContent = d.text;
      deadline = null;
    }
    door.textContent = d.door || "";
    document.body.setAttribute("data-version", String(d.version));
  }

  setInterval(tick, 200);
  var source = new EventSource("/events");
  source.onopen = function () { document.body.setAttribute("data-sse", "open"); };
  source.onerror = function () { document.body.setAttribute("data-sse", "retrying"); };
  source.onmessage = function (e) { apply(JSON.parse(e.data)); };

  var keys = document.querySelectorAll("#keypad .key");
  Array.prototype.forEach.call(keys, function (b) {
    b.addEventListener("click", function () {
      fetch("/key", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: "key=" + encodeURIComponent(b.getAttribute("data-key"))
      });
    });
  });
})();
