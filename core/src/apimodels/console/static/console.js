// The Console's only script: copy buttons ("data-copy" names the input to copy).
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  field.select();
  navigator.clipboard.writeText(field.value).then(
    () => { button.textContent = button.dataset.done || "Copied"; },
    () => { document.execCommand("copy"); button.textContent = button.dataset.done || "Copied"; },
  );
});
