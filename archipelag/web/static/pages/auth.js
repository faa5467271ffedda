// Sign-up, verification, sign-in and password reset: each form posts to the accounts API.
import { api, complain, quiet, say } from "/static/app.js";

const params = new URLSearchParams(window.location.search);

function valueOf(form, name) {
  return form.elements[name].value;
}

// Submit `form` with `send`, the button disabled meanwhile; errors go to the page's alert line.
function handle(form, send) {
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    quiet();
    try {
      await send(form);
    } catch (error) {
      complain(error);
    } finally {
      button.disabled = false;
    }
  });
}

// Only a path of this site is a place to return to after signing in.
function nextPage() {
  const next = params.get("next") || "";
  return /^\/(?![/\\])/.test(next) ? next : "/chat";
}

handle(document.getElementById("signin-form"), async (form) => {
  await api("/api/v1/auth/signin", {
    method: "POST", body: { email: valueOf(form, "email"), password: valueOf(form, "password") },
  });
  window.location.assign(nextPage());
});

handle(document.getElementById("signup-form"), async (form) => {
  const body = { email: valueOf(form, "email"), password: valueOf(form, "password") };
  const invite = valueOf(form, "invite_code").trim();
  if (invite) body.invite_code = invite;
  const answer = await api("/api/v1/auth/signup", { method: "POST", body });
  form.reset();
  say(`Account created for ${answer.data.account.email}. Check your mail: open the link we sent to verify ` +
      "your address and receive your credits.");
});

handle(document.getElementById("reset-form"), async (form) => {
  await api("/api/v1/auth/password-reset", { method: "POST", body: { email: valueOf(form, "email") } });
  say("If the address has an account, we sent it a link to set a new password. Check your mail.");
});

const confirmForm = document.getElementById("reset-confirm-form");
if (confirmForm && params.get("token")) {
  confirmForm.elements.token.value = params.get("token");
  document.getElementById("token-field").hidden = true;
  window.history.replaceState(null, "", window.location.pathname);  // the token stays out of the history
}
handle(confirmForm, async (form) => {
  await api("/api/v1/auth/password-reset/confirm", {
    method: "POST", body: { token: valueOf(form, "token").trim(), password: valueOf(form, "password") },
  });
  form.reset();
  say("Your new password is set. Sign in with it.");
});

const verifying = document.getElementById("verify");
if (verifying) {
  const token = params.get("token");
  const text = verifying.querySelector("p");
  window.history.replaceState(null, "", window.location.pathname);
  if (!token) {
    text.textContent = "This page needs the token from your verification link.";
    complain("The link has no token: open the link from the mail as it is.");
  } else {
    api("/api/v1/auth/verify", { method: "POST", body: { token } }).then((answer) => {
      const amount = Number(answer.data.account.credits).toLocaleString();
      text.textContent = "Your address is verified.";
      say(`Your address is verified. Your account has ${amount} credits.`);
    }, (error) => {
      text.textContent = "Your address could not be verified.";
      complain(error);
    });
  }
}
