// pbxbridge's API docs page: /openapi.json needs a token, so the page asks for one (an
// API_TOKENS entry or a login JWT, or logs in with a user name and password), fetches the
// document with it and shows it with Swagger UI, already authorised for "Try it out".
// The token stays in this page's memory only.
(function () {
  "use strict";
  var form = document.getElementById("token-form");
  var status = document.getElementById("status");

  function show(token) {
    status.textContent = "Loading the API document…";
    fetch("openapi.json", { headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (r.status === 401) throw new Error("the token was refused (401)");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (spec) {
        status.textContent = "";
        form.hidden = true;
        var ui = SwaggerUIBundle({
          spec: spec,
          dom_id: "#swagger-ui",
          deepLinking: true,
          presets: [SwaggerUIBundle.presets.apis],
          layout: "BaseLayout",
        });
        ui.preauthorizeApiKey("bearer", token);
      })
      .catch(function (e) {
        status.textContent = "Could not load the API document: " + e.message;
      });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var token = document.getElementById("token").value.trim();
    if (token) show(token);
  });

  document.getElementById("login").addEventListener("click", function () {
    var body = {
      username: document.getElementById("username").value,
      password: document.getElementById("password").value,
    };
    status.textContent = "Logging in…";
    fetch("auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error((j.error && j.error.message) || "HTTP " + r.status);
          return j.token;
        });
      })
      .then(show)
      .catch(function (e) {
        status.textContent = "Login failed: " + e.message;
      });
  });
})();
