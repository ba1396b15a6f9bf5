// The observer page: checks pasted labels as they are typed (batch/status,
// never the MPC), then requests the valid ones with one button, one label
// per request (batch/retrieve), so each row shows its result as soon as the
// MPC has answered for that label.
"use strict";
(function () {
  // Shows what only the script does (the live check); tests see it ran.
  document.documentElement.classList.add("js");
  var form = document.getElementById("request-form");
  var area = document.getElementById("labels");
  var button = document.getElementById("request-button");
  var summary = document.getElementById("summary");
  var quota = document.getElementById("quota");
  var table = document.getElementById("results");
  var tbody = table.querySelector("tbody");
  // Labels requested at once: enough that a slow label does not hold up the
  // others, few enough to stay within the per-user burst and MPC slots.
  var AT_ONCE = 4;
  // Fewest milliseconds between two progress lines read out by screen readers.
  var ANNOUNCE_EVERY = 5000;
  var timer = null;
  var checked = [];
  var checking = 0;

  function split(text) {
    return text.split(/[\r\n \t,;]+/).filter(function (part) { return part !== ""; });
  }

  // ---- Words: the one place where an answer becomes a sentence. ----------
  // A sentence is a list of parts: strings, and { time: "...Z" } for moments.
  // `retrievalWords` says what `retrieval_words` in src/http/routes/page.rs says.

  function kindWords(kind) {
    return {
      trksub: "a tracklet ID (trksub)",
      trkid: "a tracklet ID (trkid)",
      trksub_or_trkid: "a tracklet ID (trksub or trkid)",
      submission_id: "a submission ID",
      submission_block_id: "a submission block ID"
    }[kind] || "a label the MPC accepts";
  }

  function access(status) {
    if (status === 401) {
      return "Nothing was sent: the gateway does not know who you are. Sign in through your observatory's single sign-on, or ask the gateway's operators for access.";
    }
    if (status === 403) {
      return "Nothing was sent: your access does not allow this. Ask the gateway's operators for it.";
    }
    return null;
  }

  function checkWords(item) {
    var body = item.body || {};
    if (item.status === 200) {
      var kind = "Valid: " + kindWords(body.label_kind) + ".";
      if (body.last_requested_at) {
        return { parts: [kind + " Already requested at ", { time: body.last_requested_at },
          "; a resend is possible after ", { time: body.resend_available_at }, "."], cls: "already" };
      }
      return { parts: [kind + " Not requested yet."], cls: "valid" };
    }
    if (body.type === "urn:mpc-gateway:invalid-label") {
      return { parts: ["Invalid, will not be sent: " + body.reason + "."], cls: "invalid" };
    }
    return { parts: ["Cannot check: " + (body.detail || "the gateway answered " + item.status)], cls: "refused" };
  }

  function inSeconds(seconds) {
    return new Date(Date.now() + seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  }

  function retrievalWords(item) {
    var body = item.body || {};
    if (item.status === 200) {
      if (body.status === "sent") {
        return { parts: ["Sent: the MPC will email the action code. A resend is possible after ",
          { time: body.resend_available_at }, "."], cls: "sent" };
      }
      return { parts: ["Already requested at ", { time: body.requested_at },
        "; a resend is possible after ", { time: body.resend_available_at }, "."], cls: "already" };
    }
    switch (body.type) {
      case "urn:mpc-gateway:invalid-label":
        return { parts: ["Invalid, not sent: " + body.reason + "."], cls: "invalid" };
      case "urn:mpc-gateway:upstream-rejected":
        return { parts: ["Refused by the MPC: " + body.detail], cls: "refused" };
      case "urn:mpc-gateway:quota-exceeded":
        var why = body.limit === "requests_per_minute"
          ? "you sent too many requests in the last minute"
          : "your quota of labels sent to the MPC is used up for now";
        return { parts: ["Not sent: " + why + ". Try again after ",
          { time: inSeconds(body.retry_after_seconds || 0) }, "."], cls: "refused" };
      // Their detail says whether the MPC may still send the email.
      case "urn:mpc-gateway:upstream-timeout":
      case "urn:mpc-gateway:upstream-error":
        return { parts: [body.detail], cls: "refused" };
      case "urn:mpc-gateway:upstream-throttled":
        return { parts: ["Not sent: the MPC asked the gateway to wait until ", { time: body.paused_until },
          " before sending it anything, so nothing was sent; this says nothing about the label. " +
          "Try again after that time."], cls: "refused" };
    }
    return { parts: ["Not sent: " + (body.detail || "the gateway answered " + item.status)], cls: "refused" };
  }

  var UNREACHABLE = { parts: ["The gateway could not be reached, so this label may or may not have been sent: check the mailbox before trying again."], cls: "refused" };

  function summaryWords(classes) {
    var counts = { sent: 0, already: 0, invalid: 0, other: 0 };
    classes.forEach(function (cls) { counts[cls in counts ? cls : "other"] += 1; });
    var parts = [[counts.sent, "sent now"], [counts.already, "already requested"],
      [counts.invalid, "invalid"], [counts.other, "not sent"]]
      .filter(function (pair) { return pair[0] > 0; })
      .map(function (pair) { return pair[0] + " " + pair[1]; });
    return classes.length + " label" + (classes.length === 1 ? "" : "s") + " handled: " + parts.join(", ") + ".";
  }

  // ---- Times: the observer's local time, and how long ago or until. -------

  var relative = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;
  var UNITS = [["second", 60], ["minute", 60], ["hour", 24], ["day", 365], ["year", Infinity]];

  function howFar(date) {
    if (!relative) { return ""; }
    var amount = Math.round((date.getTime() - Date.now()) / 1000);
    for (var i = 0; i < UNITS.length; i++) {
      // Up to one and a half of the next unit, count in this one ("in 60 minutes").
      if (Math.abs(amount) < UNITS[i][1] * 1.5 || i === UNITS.length - 1) {
        return relative.format(amount, UNITS[i][0]);
      }
      amount = Math.round(amount / UNITS[i][1]);
    }
    return "";
  }

  function showTime(element) {
    var date = new Date(element.getAttribute("datetime"));
    if (isNaN(date.getTime())) { return; }
    var local = date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    var far = howFar(date);
    element.textContent = local;
    if (far) {
      var span = document.createElement("span");
      span.className = "far";
      span.textContent = "(" + far + ")";
      element.appendChild(document.createTextNode(" "));
      element.appendChild(span);
    }
    element.title = date.toISOString().replace(/\.\d+Z$/, "Z").replace("T", " ").replace("Z", " UTC");
  }

  function refreshTimes() {
    Array.prototype.forEach.call(table.querySelectorAll("time[datetime]"), showTime);
  }

  // ---- The table: one row per label, in the order given. ------------------

  function fill(cell, words) {
    while (cell.firstChild) { cell.removeChild(cell.firstChild); }
    words.parts.forEach(function (part) {
      if (typeof part === "string") {
        cell.appendChild(document.createTextNode(part));
      } else if (!part.time) {
        cell.appendChild(document.createTextNode("an unknown time"));
      } else {
        var time = document.createElement("time");
        time.setAttribute("datetime", part.time);
        showTime(time);
        cell.appendChild(time);
      }
    });
    cell.parentNode.className = words.cls;
  }

  // One row per entry ({label, words}), in order; returns their status cells.
  function rows(entries) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    table.hidden = entries.length === 0;
    return entries.map(function (entry) {
      var row = document.createElement("tr");
      var name = document.createElement("td");
      var code = document.createElement("code");
      code.textContent = entry.label;
      name.appendChild(code);
      var text = document.createElement("td");
      row.appendChild(name);
      row.appendChild(text);
      tbody.appendChild(row);
      fill(text, entry.words);
      return text;
    });
  }

  function showQuota(response) {
    var field = response.headers.get("RateLimit");
    var match = field && /r=(\d+)/.exec(field);
    if (match) {
      quota.textContent = "You may have " + match[1] + " more labels sent to the MPC now.";
    }
  }

  function post(path, labels) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ labels: labels })
    }).then(function (response) {
      showQuota(response);
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { status: response.status, body: body };
      });
    });
  }

  function refusedBatch(answer) {
    summary.textContent = access(answer.status) ||
      ("Nothing was sent: " + (answer.body.detail || "the gateway answered " + answer.status) + ".");
  }

  function check() {
    var labels = split(area.value);
    var run = ++checking;
    if (labels.length === 0) {
      checked = [];
      rows([]);
      summary.textContent = "";
      return;
    }
    post("/api/action-codes/batch/status", labels).then(function (answer) {
      if (run !== checking) { return; }
      if (answer.status !== 200) { refusedBatch(answer); return; }
      checked = answer.body.items;
      rows(checked.map(function (item) { return { label: item.label, words: checkWords(item) }; }));
      var ready = checked.filter(function (item) { return checkWords(item).cls === "valid"; }).length;
      var invalid = checked.filter(function (item) { return item.status === 422; }).length;
      summary.textContent = labels.length + " labels checked: " + ready + " ready to request, " + invalid + " invalid.";
    }, function () {
      if (run !== checking) { return; }
      summary.textContent = "The gateway could not be reached; check your connection.";
    });
  }

  // Requests each of `labels` in its own one-label batch, AT_ONCE at a time;
  // `answered(label, words)` as each answer arrives, `done(refusal)` at the end.
  function requestEach(labels, answered, done) {
    var next = 0;
    var running = 0;
    var refusal = null;

    function start() {
      if (refusal || next >= labels.length) {
        if (running === 0) { done(refusal); }
        return;
      }
      var label = labels[next++];
      running += 1;
      send(label);
    }

    function send(label) {
      post("/api/action-codes/batch/retrieve", [label]).then(function (answer) {
        if (answer.status === 200) {
          answered(label, retrievalWords(answer.body.items[0]));
        } else if (answer.status === 429 && answer.body.limit === "requests_per_minute") {
          // Refused before anything was charged or sent: wait and ask again.
          var seconds = answer.body.retry_after_seconds || 1;
          answered(label, { parts: ["Waiting: too many requests in the last minute; asking again at ",
            { time: inSeconds(seconds) }, "."], cls: "pending" });
          setTimeout(function () { send(label); }, seconds * 1000);
          return;
        } else if (answer.status === 401 || answer.status === 403) {
          refusal = answer;
          answered(label, { parts: ["Not sent: " + access(answer.status)], cls: "refused" });
        } else {
          answered(label, retrievalWords(answer));
        }
        running -= 1;
        start();
      }, function () {
        answered(label, UNREACHABLE);
        running -= 1;
        start();
      });
    }

    for (var i = 0; i < AT_ONCE; i++) { start(); }
  }

  area.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearTimeout(timer);
    checking += 1;
    var labels = split(area.value);
    if (labels.length === 0) {
      summary.textContent = "Paste at least one label.";
      return;
    }
    // Checked: request the valid labels not requested yet, keep the others'
    // words. Not checked yet, or nothing new: request every valid label.
    var current = checked.length === labels.length && checked.every(function (item, i) {
      return item.label === labels[i];
    });
    var items = current ? checked : labels.map(function (label) { return { label: label, status: 0 }; });
    var fresh = items.some(function (item) { return item.status === 200 && checkWords(item).cls === "valid"; });
    var entries = items.map(function (item) {
      var wanted = item.status === 0 || (item.status === 200 && (!fresh || checkWords(item).cls === "valid"));
      if (wanted) {
        return { label: item.label, words: { parts: ["Requesting…"], cls: "pending" }, wanted: true };
      }
      return { label: item.label, words: item.status === 422 ? retrievalWords(item) : checkWords(item) };
    });
    var pending = [];
    entries.forEach(function (entry) {
      if (entry.wanted && pending.indexOf(entry.label) < 0) { pending.push(entry.label); }
    });
    if (pending.length === 0) {
      summary.textContent = "No valid label to request.";
      return;
    }
    var cells = rows(entries);
    var classes = entries.map(function (entry) { return entry.words.cls; });
    var left = pending.length;
    var announced = Date.now();
    button.disabled = true;
    table.setAttribute("aria-busy", "true");
    summary.textContent = "Requesting " + pending.length + " label" + (pending.length === 1 ? "" : "s") + "…";
    requestEach(pending, function (label, words) {
      entries.forEach(function (entry, i) {
        if (entry.wanted && entry.label === label) {
          fill(cells[i], words);
          classes[i] = words.cls;
        }
      });
      if (words.cls === "pending") { return; }
      left -= 1;
      // A polite progress line now and then, not one per label.
      if (left > 0 && Date.now() - announced >= ANNOUNCE_EVERY) {
        announced = Date.now();
        summary.textContent = (pending.length - left) + " of " + pending.length + " labels answered so far…";
      }
    }, function (refusal) {
      button.disabled = false;
      table.removeAttribute("aria-busy");
      if (refusal) {
        entries.forEach(function (entry, i) {
          if (classes[i] === "pending") { fill(cells[i], { parts: ["Not sent."], cls: "refused" }); }
        });
        refusedBatch(refusal);
      } else {
        summary.textContent = summaryWords(classes);
      }
      checked = [];
    });
  });

  refreshTimes();
  setInterval(refreshTimes, 30000);
  if (area.value) { check(); }
}());
