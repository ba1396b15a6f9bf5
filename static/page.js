// The observer page: checks pasted labels as they are typed (batch/status,
// never the MPC) and requests the valid ones with one button (batch/retrieve).
"use strict";
(function () {
  var form = document.getElementById("request-form");
  var area = document.getElementById("labels");
  var button = document.getElementById("request-button");
  var summary = document.getElementById("summary");
  var quota = document.getElementById("quota");
  var table = document.getElementById("results");
  var tbody = table.querySelector("tbody");
  var timer = null;
  var checked = [];
  var checking = 0;

  function split(text) {
    return text.split(/[\r\n \t,;]+/).filter(function (part) { return part !== ""; });
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

  function statusWords(item) {
    var body = item.body || {};
    if (item.status === 200) {
      var kind = "Valid " + body.label_kind + ".";
      if (body.last_requested_at) {
        return [kind + " Already requested at " + body.last_requested_at + "; a resend is possible after " + body.resend_available_at + ".", "already"];
      }
      return [kind + " Not requested yet.", "valid"];
    }
    if (body.type === "urn:mpc-gateway:invalid-label") {
      return ["Invalid, will not be sent: " + body.reason + ".", "invalid"];
    }
    return ["Cannot check: " + (body.detail || "status " + item.status), "refused"];
  }

  function after(seconds) {
    return new Date(Date.now() + seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  }

  function retrieveWords(item) {
    var body = item.body || {};
    if (item.status === 200) {
      if (body.status === "sent") {
        return ["Sent: the MPC will email the action code. A resend is possible after " + body.resend_available_at + ".", "sent"];
      }
      return ["Already requested at " + body.requested_at + "; a resend is possible after " + body.resend_available_at + ".", "already"];
    }
    if (body.type === "urn:mpc-gateway:invalid-label") {
      return ["Invalid, not sent: " + body.reason + ".", "invalid"];
    }
    if (body.type === "urn:mpc-gateway:upstream-rejected") {
      return ["Refused by the MPC: " + body.detail, "refused"];
    }
    if (body.type === "urn:mpc-gateway:upstream-throttled") {
      return ["Not sent: the MPC asked the gateway to wait until " + body.paused_until + " (UTC; " +
        new Date(body.paused_until).toLocaleString() + " your time) before sending it anything, " +
        "so nothing was sent; this says nothing about the label. Try again after that time.", "refused"];
    }
    if (typeof body.retry_after_seconds === "number") {
      return ["Not sent: " + body.detail + " Try again after " + after(body.retry_after_seconds) + ".", "refused"];
    }
    return ["Not sent: " + (body.detail || "status " + item.status), "refused"];
  }

  function show(items, words) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    items.forEach(function (item) {
      var w = words(item);
      var row = document.createElement("tr");
      row.className = w[1];
      var name = document.createElement("td");
      var code = document.createElement("code");
      code.textContent = item.label;
      name.appendChild(code);
      var text = document.createElement("td");
      text.textContent = w[0];
      row.appendChild(name);
      row.appendChild(text);
      tbody.appendChild(row);
    });
    table.hidden = items.length === 0;
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
      show([], statusWords);
      summary.textContent = "";
      return;
    }
    post("/api/action-codes/batch/status", labels).then(function (answer) {
      if (run !== checking) { return; }
      if (answer.status !== 200) { refusedBatch(answer); return; }
      checked = answer.body.items;
      show(checked, statusWords);
      var ready = checked.filter(function (item) { return statusWords(item)[1] === "valid"; }).length;
      var invalid = checked.filter(function (item) { return item.status === 422; }).length;
      summary.textContent = labels.length + " labels checked: " + ready + " ready to request, " + invalid + " invalid.";
    }, function () {
      summary.textContent = "The gateway could not be reached; check your connection.";
    });
  }

  area.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearTimeout(timer);
    var labels = split(area.value);
    if (labels.length === 0) {
      summary.textContent = "Paste at least one label.";
      return;
    }
    // Only the valid labels not requested yet; the rest keep their check.
    var pending = checked.length ? checked.filter(function (item) {
      return statusWords(item)[1] === "valid";
    }).map(function (item) { return item.label; }) : labels;
    var kept = checked.filter(function (item) { return statusWords(item)[1] !== "valid"; });
    if (pending.length === 0) {
      pending = labels.filter(function (label) {
        return !kept.some(function (item) { return item.label === label && item.status === 422; });
      });
      kept = kept.filter(function (item) { return item.status === 422; });
    }
    if (pending.length === 0) {
      summary.textContent = "No valid label to request.";
      return;
    }
    button.disabled = true;
    summary.textContent = "Requesting " + pending.length + " labels…";
    post("/api/action-codes/batch/retrieve", pending).then(function (answer) {
      button.disabled = false;
      if (answer.status !== 200) { refusedBatch(answer); return; }
      var items = answer.body.items.map(function (item) { return { label: item.label, w: retrieveWords(item) }; })
        .concat(kept.map(function (item) {
          var w = item.status === 422 ? ["Invalid, not sent: " + item.body.reason + ".", "invalid"] : statusWords(item);
          return { label: item.label, w: w };
        }));
      show(items, function (item) { return item.w; });
      var sent = items.filter(function (item) { return item.w[1] === "sent"; }).length;
      summary.textContent = items.length + " labels handled: " + sent + " sent now, " + (items.length - sent) + " not sent now (see each one below).";
      checked = [];
    }, function () {
      button.disabled = false;
      summary.textContent = "The gateway could not be reached; nothing may have been sent. Check your connection.";
    });
  });

  if (area.value) { check(); }
}());
