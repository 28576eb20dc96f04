/* main.js: start the console (the screens have registered themselves by now). */
(function () {
  document.getElementById("tz").textContent = C.timeZone;
  window.addEventListener("hashchange", () => {
    if (Date.now() - (C.noticeAt || 0) > 1500) C.clearNotice();  // keep what an action just reported
    C.render();
  });
  C.render();
})();
