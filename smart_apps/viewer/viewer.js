// A minimal SMART App Launch 2.2 client: PKCE (S256), standalone or EHR launch, no library.
"use strict";

const CLIENT_ID = document.currentScript.dataset.clientId || localStorage.getItem("viewer.client_id");
const REDIRECT = new URL("./", window.location.href).href;
// The FHIR base of the gateway that serves this page: the only server the viewer
// signs in to, whatever a link says (a link can come from any site).
const OWN_ISS = new URL("../../fhir", window.location.href).href;
const SCOPE = "launch/patient openid fhirUser patient/ImagingStudy.rs patient/Patient.rs patient/DocumentReference.rs";
const status = (text, bad) => {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = bad ? "error" : "";
};

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function ownIss(iss) {
  const trimmed = String(iss).replace(/\/+$/, "");
  if (trimmed !== OWN_ISS) {
    throw new Error(`${trimmed} is not this gateway's FHIR server (${OWN_ISS}); not signing in there.`);
  }
  return trimmed;
}

// Where discovery sends the browser or the code: https, or this site itself. Never
// javascript:, data: or plain http elsewhere.
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
  return url.href;
}

async function discover(iss) {
  const response = await fetch(`${iss}/.well-known/smart-configuration`);
  if (!response.ok) throw new Error(`discovery failed (${response.status})`);
  const config = await response.json();
  return {
    authorization_endpoint: safeEndpoint(config, "authorization_endpoint", "authorization endpoint"),
    token_endpoint: safeEndpoint(config, "token_endpoint", "token endpoint"),
  };
}

async function authorize(untrustedIss, launch) {
  const iss = ownIss(untrustedIss);
  const clientId = new URLSearchParams(window.location.search).get("client_id") || CLIENT_ID;
  if (!clientId) { status("No client_id: open this page with ?client_id=... from demo.json.", true); return; }
  const config = await discover(iss);
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(48)));
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = base64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("viewer", JSON.stringify({ iss, verifier, state, clientId, config }));
  localStorage.setItem("viewer.client_id", clientId);
  const params = new URLSearchParams({
    response_type: "code", client_id: clientId, redirect_uri: REDIRECT, state, aud: iss,
    scope: launch ? SCOPE.replace("launch/patient", "launch") : SCOPE,
    code_challenge: challenge, code_challenge_method: "S256",
  });
  if (launch) params.set("launch", launch);
  window.location.assign(`${config.authorization_endpoint}?${params}`);
}

async function finish(code, state) {
  const saved = JSON.parse(sessionStorage.getItem("viewer") || "null");
  if (!saved || saved.state !== state) { status("This sign-in did not start here; try again.", true); return; }
  const response = await fetch(saved.config.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code, redirect_uri: REDIRECT,
      code_verifier: saved.verifier, client_id: saved.clientId,
    }),
  });
  const token = await response.json();
  if (!response.ok) { status(`Token refused: ${token.error_description || token.error}`, true); return; }
  history.replaceState(null, "", REDIRECT);
  // Kept for this tab only, so that a reload can show that a revoked token stops working.
  sessionStorage.setItem("viewer.token", token.access_token);
  await show(saved.iss, token);
}

async function fhir(iss, token, path) {
  const response = await fetch(`${iss}/${path}`, {
    headers: { Authorization: `Bearer ${token.access_token}`, Accept: "application/fhir+json" },
  });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function show(iss, token) {
  const patient = await fhir(iss, token, `Patient/${token.patient}`);
  const banner = document.getElementById("banner");
  banner.hidden = false;
  banner.textContent = `${patient.name?.[0]?.text || "Patient"} · born ${patient.birthDate || "?"}`;
  const bundle = await fhir(iss, token, `ImagingStudy?patient=${token.patient}&_count=50`);
  const studies = (bundle.entry || []).map((entry) => entry.resource);
  status(`${studies.length} imaging studies shared with this app.`);
  const list = document.getElementById("studies");
  for (const study of studies) {
    const box = document.createElement("div");
    box.className = "study";
    box.dataset.study = study.id;
    const title = document.createElement("strong");
    title.textContent = `${study.started || ""} ${study.description || study.id}`;
    box.append(title);
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    box.append(thumbs);
    list.append(box);
    const series = study.series?.[0];
    const instance = series?.instance?.[0];
    if (!instance) continue;
    const dicomweb = iss.replace(/\/fhir$/, "/dicomweb");
    const url = `${dicomweb}/studies/${study.id}/series/${series.uid}/instances/${instance.uid}/thumbnail`;
    fetch(url, { headers: { Authorization: `Bearer ${token.access_token}`, Accept: "image/jpeg" } })
      .then((r) => (r.ok ? r.blob() : null))
      .then((blob) => {
        if (!blob) return;
        const img = document.createElement("img");
        img.alt = `First image of ${study.description || "the study"}`;
        img.src = URL.createObjectURL(blob);
        thumbs.append(img);
      });
  }
}

(async () => {
  const query = new URLSearchParams(window.location.search);
  try {
    if (query.get("code")) return await finish(query.get("code"), query.get("state"));
    if (query.get("error")) return status(`Not shared: ${query.get("error_description") || query.get("error")}`, true);
    if (query.get("iss")) return await authorize(query.get("iss"), query.get("launch"));
    const start = document.getElementById("start");
    start.hidden = false;
    start.onclick = () => authorize(OWN_ISS).catch((error) => status(String(error), true));
  } catch (error) {
    status(String(error), true);
  }
})();
