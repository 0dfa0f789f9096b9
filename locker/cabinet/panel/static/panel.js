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
    // Attributes that go away are removed before the state changes and new ones are set
    // after it, so no observer ever sees a state with the reason or door of another one
    // (seen: "granted" with the "compartment_unavailable" of the jam before it).
    var fields = { compartment: d.compartment, reason: d.reason, "out-of-order": d.out_of_order };
    Object.keys(fields).forEach(function (k) { if (!fields[k]) { setData(k, null); } });
    msg.setAttribute("data-state", d.state);
    Object.keys(fields).forEach(function (k) { if (fields[k]) { setData(k, fields[k]); } });
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

  // The stream, kept open whatever happens. EventSource reconnects by itself only after a
  // network error on a stream that was open; an HTTP error (503 "too many streams" while dead
  // clients still hold the slots, a server restarting) closes it for good. So: on any error
  // of a closed source, and when the server's beats stop (a half-open connection), open a new
  // one after a back-off of 1 s doubling to BACKOFF_MAX_MS, jittered; reset once open.
  var BACKOFF_MIN_MS = 1000;
  var BACKOFF_MAX_MS = 8000;
  var BEAT_MISSED_MS = 16000;  // three of the server's 5 s beats, plus slack
  var source = null;
  var backoff = BACKOFF_MIN_MS;
  var retryTimer = null;
  var lastByte = performance.now();

  function sse(state) { document.body.setAttribute("data-sse", state); }

  function retryLater() {
    sse("retrying");
    if (source !== null) { source.close(); source = null; }
    if (retryTimer !== null) { return; }
    var delay = backoff * (0.5 + Math.random() / 2);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retryTimer = setTimeout(connect, delay);
  }

  function connect() {
    retryTimer = null;
    lastByte = performance.now();
    var s = new EventSource("/events");
    source = s;
    s.onopen = function () { backoff = BACKOFF_MIN_MS; lastByte = performance.now(); sse("open"); };
    s.onmessage = function (e) { lastByte = performance.now(); apply(JSON.parse(e.data)); };
    s.addEventListener("beat", function () { lastByte = performance.now(); });
    s.onerror = function () {
      if (s !== source) { return; }
      if (s.readyState === EventSource.CLOSED) { retryLater(); } else { sse("retrying"); }
    };
  }

  setInterval(function () {
    tick();
    if (source !== null && performance.now() - lastByte > BEAT_MISSED_MS) { retryLater(); }
  }, 200);
  connect();

  // The keys are a form that works without this script; with it, a key is sent in the
  // background and the page stays (and follows the stream).
  var keys = document.querySelectorAll("#keypad .key");
  Array.prototype.forEach.call(keys, function (b) {
    b.addEventListener("click", function (e) {
      e.preventDefault();
      fetch("/key", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: "key=" + encodeURIComponent(b.getAttribute("data-key"))
      }).catch(function () { /* the next key or the stream will tell */ });
    });
  });
})();
