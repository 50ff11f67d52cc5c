// Placeholder: the console helper replaces this file with the page's script.
const app = document.getElementById("app");
fetch("/api/v1/session", { credentials: "same-origin" }).then((r) => {
  app.dataset.signedIn = String(r.ok);
});
