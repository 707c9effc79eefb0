// The SMART launch page for OHIF: standalone and EHR launch (SMART App Launch 2.2, with
// fhirclient from npm), for patients and physicians. It signs in at this gateway only,
// then opens OHIF (../ohif/): the study of the launch's fhirContext when there is one,
// else the study list. fhirclient keeps the token in this tab's sessionStorage, where
// OHIF's side (../ohif/smart-auth.js) reads it; the token is never put in a URL.
"use strict";

const HERE = new URL("./", window.location.href).href;
const OHIF = new URL("../ohif/", window.location.href).href;
// The FHIR base of the gateway that serves this page: the only server this page signs
// in to, whatever a link says (a link can come from any site).
const OWN_ISS = new URL("../../fhir", window.location.href).href;
// online_access: a refresh token for the session. Standalone, the signed-in person is
// offered what they can grant: patients the patient/ scopes, physicians the user/ ones.
// An EHR launch is about one patient: patient/ scopes only, so the token (and OHIF's
// "other studies of this patient") stays with that patient.
const BASE_SCOPE = "openid fhirUser online_access";
const PATIENT_SCOPE = "patient/ImagingStudy.rs patient/Patient.rs patient/DocumentReference.rs";
const USER_SCOPE = "user/ImagingStudy.rs user/Patient.rs user/DocumentReference.rs";

function status(text, bad) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = bad ? "error" : "";
}

function ownIss(iss) {
  const trimmed = String(iss).replace(/\/+$/, "");
  if (trimmed !== OWN_ISS) {
    throw new Error(`${trimmed} is not this gateway's FHIR server (${OWN_ISS}); not signing in there.`);
  }
  return trimmed;
}

// Where discovery sends the browser or the code: https, or this site itself. Never
// javascript:, data: or plain http elsewhere. Checked before fhirclient follows it.
function safeEndpoint(config, name, label) {
  let url;
  try {
    url = new URL(config[name]);
  } catch {
    throw new Error(`The server names no usable ${label}; not following it.`);
  }
  if (url.protocol !== "https:" && url.origin !== window.location.origin) {
    throw new Error(`The server's ${label} (${url.href}) is neither https nor on this site; not following it.`);
  }
}

async function checkDiscovery(iss) {
  const response = await fetch(`${iss}/.well-known/smart-configuration`);
  if (!response.ok) throw new Error(`discovery failed (${response.status})`);
  const config = await response.json();
  safeEndpoint(config, "authorization_endpoint", "authorization endpoint");
  safeEndpoint(config, "token_endpoint", "token endpoint");
}

function clientId() {
  const given = new URLSearchParams(window.location.search).get("client_id");
  if (given) localStorage.setItem("gateway.client_id", given);
  return given || localStorage.getItem("gateway.client_id");
}

async function authorize(untrustedIss, launch) {
  const iss = ownIss(untrustedIss);
  const id = clientId();
  if (!id) throw new Error("No client_id: open this page with ?client_id=... (see var/demo.json).");
  await checkDiscovery(iss);
  await FHIR.oauth2.authorize({
    clientId: id,
    iss,
    launch: launch || undefined,
    scope: launch
      ? `launch ${BASE_SCOPE} ${PATIENT_SCOPE}`
      : `launch/patient ${BASE_SCOPE} ${PATIENT_SCOPE} ${USER_SCOPE}`,
    redirectUri: HERE,
    pkceMode: "required",
  });
}

// The OHIF route for what was launched: the study in context, or the study list.
function viewerRoute(tokenResponse) {
  const back = sessionStorage.getItem("gateway.return");
  sessionStorage.removeItem("gateway.return");
  if (back && back.startsWith(new URL(OHIF).pathname)) return back;
  const studies = (tokenResponse.fhirContext || [])
    .map((item) => String(item.reference || ""))
    .filter((reference) => reference.startsWith("ImagingStudy/"))
    .map((reference) => reference.slice("ImagingStudy/".length));
  // A patient who chose some studies has them all as context: the list shows them.
  if (studies.length === 1) {
    return `${OHIF}viewer?${new URLSearchParams({ StudyInstanceUIDs: studies[0] })}`;
  }
  return OHIF;
}

async function finish() {
  FHIR.oauth2.settings.refreshTokenWithClientId = true;
  const client = await FHIR.oauth2.ready();
  status("Signed in; opening the viewer…");
  window.location.replace(viewerRoute(client.state.tokenResponse || {}));
}

(async () => {
  const query = new URLSearchParams(window.location.search);
  try {
    if (query.get("error")) {
      status(`Not shared: ${query.get("error_description") || query.get("error")}`, true);
      return;
    }
    if (query.get("code")) return await finish();
    if (query.get("iss")) return await authorize(query.get("iss"), query.get("launch"));
    if (query.get("relaunch")) return await authorize(OWN_ISS);
    const start = document.getElementById("start");
    start.hidden = false;
    start.onclick = () => authorize(OWN_ISS).catch((error) => status(String(error.message || error), true));
  } catch (error) {
    status(String(error.message || error), true);
  }
})();
