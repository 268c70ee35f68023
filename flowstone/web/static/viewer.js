// Apply the case filters as soon as one changes; the form still works without JavaScript.
document.querySelectorAll("form.filters select, form.filters input[type=checkbox]").forEach(function (el) {
  el.addEventListener("change", function () { el.form.submit(); });
});
