// Shows every <time> of the page in the viewer's own time zone; the UTC value stays in its title. The pages work
// without this script: they show UTC.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var at = new Date(el.getAttribute("datetime"));
  if (!isNaN(at)) {
    el.textContent = at.toLocaleString();
  }
});
