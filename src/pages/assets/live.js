// gitopsd status pages: live updates by Server-Sent Events. The pages work without this script.
(function () {
  var main = document.getElementById("live");
  if (!main || !main.dataset.events || !window.EventSource) return;
  var source = new EventSource(main.dataset.events);
  source.onmessage = function (event) { main.innerHTML = event.data; };
})();
