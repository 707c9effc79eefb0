// A share link's recipient in OHIF (/share/ohif/): no token, no SMART launch.
//
// The gateway's app-config.js for this page names a capability URL as OHIF's DICOMweb
// root and sets window.gatewayShareSession (loaded after this file). The capability is
// short-lived: while the page is open it is renewed (POST renew, with the share session's
// cookie and CSRF token), never past the share's end. When the share ends (withdrawn,
// expired, closed) the gateway refuses the capability and the renewal; the tab then goes
// to the share page, which says that access has ended.
"use strict";
(function () {
  let timer = null;
  let over = false;

  function session() {
    return window.gatewayShareSession;
  }

  function ended() {
    if (over) return null;
    over = true;
    clearTimeout(timer);
    window.location.replace(session().ended);
    return null;
  }

  function schedule(seconds) {
    clearTimeout(timer);
    timer = setTimeout(renew, seconds * 1000);
  }

  async function renew() {
    const current = session();
    try {
      const answer = await fetch(current.renew, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": current.csrf },
        body: JSON.stringify({ capability: current.capability }),
      });
      if (answer.status === 401 || answer.status === 404) return ended();
      schedule(answer.ok ? current.renewEvery : 5);
    } catch (error) {
      console.warn("could not renew the viewer's access; trying again", error);
      schedule(5);
    }
    return null;
  }

  window.gatewayShare = {
    extension: {
      id: "@gateway/share-viewer",
      preRegistration({ servicesManager }) {
        const auth = servicesManager.services.userAuthenticationService;
        // The capability URL is the permission: no Authorization header.
        auth.setServiceImplementation({
          getAuthorizationHeader: () => undefined,
          handleUnauthenticated: ended,
        });
        schedule(session().renewEvery);
      },
    },
    httpError(error) {
      // The capability answers 404 once the share has ended (and for nothing else OHIF
      // asks of the shared studies): back to the share page, which says why.
      if (error && (error.status === 401 || error.status === 404)) ended();
    },
  };
})();
