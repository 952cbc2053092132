// The review page's keyboard: 1/2 request harmful/unharmful, 3/4 response harmful/unharmful (the label is
// sent once every part is chosen), s skip, z undo, n note (Esc leaves it).
"use strict";
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const form = document.getElementById("label-form");
  const choices = {"1": "request-harmful", "2": "request-unharmful", "3": "response-harmful", "4": "response-unharmful"};
  if (form && choices[event.key]) {
    const radio = document.getElementById(choices[event.key]);
    if (!radio) return;
    radio.checked = true;
    event.preventDefault();
    const needsResponse = form.dataset.needsResponse === "yes";
    const chosen = (name) => form.querySelector(`input[name="${name}"]:checked`) !== null;
    if (chosen("request") && (!needsResponse || chosen("response"))) form.requestSubmit();
    return;
  }
  const actions = {"s": "skip-form", "z": "undo-form"};
  if (actions[event.key] && document.getElementById(actions[event.key])) {
    event.preventDefault();
    document.getElementById(actions[event.key]).requestSubmit();
  } else if (event.key === "n" && document.getElementById("note")) {
    event.preventDefault();
    document.getElementById("note").focus();
  }
});
