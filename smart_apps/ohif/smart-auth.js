// Hands the SMART access token from the launch page to OHIF, and keeps it fresh.
//
// The launch page (../launch/) signs in with fhirclient, which keeps the token in this
// tab's sessionStorage. Here the same library reads it back, and an OHIF extension gives
// it to OHIF's userAuthenticationService: every DICOMweb request then carries
// "Authorization: Bearer ...". The token never appears in a URL. Before it expires it is
// refreshed (refresh token); when that is not possible, or the gateway answers 401, the
// tab goes back through the launch page, which comes straight back when the grant still
// covers the app (no consent page), and to this same viewer route.
"use strict";
(function () {
  const settings = window.gatewayOhif;
  const EARLY = 30; // seconds before expiry
  let client = null;
  let timer = null;

  function relaunch() {
    sessionStorage.setItem("gateway.return", window.location.pathname + window.location.search);
    window.location.assign(`${settings.launchPage}?relaunch=1`);
    return null;
  }

  function token() {
    return client && client.state.tokenResponse && client.state.tokenResponse.access_token;
  }

  function schedule() {
    const expiresAt = client && client.state.expiresAt;
    if (!expiresAt) return;
    const wait = Math.max(5, expiresAt - Date.now() / 1000 - EARLY);
    clearTimeout(timer);
    timer = setTimeout(refresh, wait * 1000);
  }

  async function refresh() {
    if (!client || !client.state.tokenResponse.refresh_token) return relaunch();
    try {
      await client.refresh();
      schedule();
    } catch (error) {
      console.warn("token refresh failed; launching again", error);
      relaunch();
    }
    return null;
  }

  FHIR.oauth2.settings.refreshTokenWithClientId = true;
  FHIR.oauth2.settings.replaceBrowserHistory = false;
  const ready = FHIR.oauth2.ready().then(
    async (found) => {
      client = found;
      const expiresAt = found.state.expiresAt;
      // A tab come back after a while: a fresh token before OHIF asks for anything.
      if (expiresAt && expiresAt - Date.now() / 1000 < EARLY) return refresh();
      schedule();
      return found;
    },
    () => relaunch(),
  );

  window.gatewaySmart = {
    extension: {
      id: "@gateway/smart-auth",
      async preRegistration({ servicesManager }) {
        await ready; // OHIF asks for nothing before the token is there
        const auth = servicesManager.services.userAuthenticationService;
        auth.setServiceImplementation({
          getAuthorizationHeader: () => (token() ? { Authorization: `Bearer ${token()}` } : undefined),
          handleUnauthenticated: relaunch,
        });
      },
    },
    httpError(error) {
      if (error && error.status === 401) refresh();
    },
  };
})();
