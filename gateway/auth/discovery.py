"""The discovery documents, every URL built from GATEWAY_PUBLIC_URL (never from headers)."""

from __future__ import annotations

from typing import Any

from gateway.settings import Settings

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "authorize-post",
    # SMART Imaging Access 0.1: this FHIR endpoint serves ImagingStudy itself (its
    # DICOMweb root is on the same server), so the strings go in the top-level list.
    "smart-imaging-access",
    "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch",
    "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services",
]
# How clients authenticate at the token, introspection and revocation endpoints.
CLIENT_AUTH_METHODS = ("client_secret_basic", "private_key_jwt", "none")
SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/ImagingStudy.rs",
    "patient/DocumentReference.rs",
    "patient/Patient.rs",
    "user/*.rs",
    "user/ImagingStudy.rs",
    "user/ImagingStudy.c",
    "user/DocumentReference.rs",
    "system/*.rs",
    "system/ImagingStudy.rs",
    "system/ImagingStudy.c",
    "system/DocumentReference.rs",
]
STYLE = {
    "color_background": "#f7f9fb",
    "color_error": "#b00020",
    "color_highlight": "#005a9c",
    "color_modal_backdrop": "rgba(0,0,0,0.4)",
    "color_success": "#2e7d32",
    "color_text": "#1b1b1b",
    "dim_border_radius": "6px",
    "dim_font_size": "16px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}


def endpoints(settings: Settings) -> dict[str, str]:
    if settings.external_as:
        return external_endpoints(settings)
    oauth = settings.oauth_base_url
    return {
        "authorization_endpoint": f"{oauth}/authorize",
        "token_endpoint": f"{oauth}/token",
        "introspection_endpoint": f"{oauth}/introspect",
        "revocation_endpoint": f"{oauth}/revoke",
        "registration_endpoint": f"{oauth}/register",
        "jwks_uri": f"{oauth}/jwks",
    }


def external_endpoints(settings: Settings) -> dict[str, str]:
    """External authorization server mode: the EHR's server authorizes, issues and
    introspects; only the endpoints configured for it are named."""
    issuer = settings.external_as_issuer or settings.public_url
    found = {
        "authorization_endpoint": settings.external_as_authorization_url or f"{issuer}/authorize",
        "token_endpoint": settings.external_as_token_url or f"{issuer}/token",
    }
    if settings.external_as_introspection_url:
        found["introspection_endpoint"] = settings.external_as_introspection_url
    return found


def smart_configuration(settings: Settings) -> dict[str, Any]:
    return {
        "issuer": settings.external_as_issuer or settings.public_url,
        **endpoints(settings),
        "management_endpoint": f"{settings.public_url}/portal",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        # RFC 8414: "none" is a public client naming itself, "Bearer" an access token's
        # holder; both learn only about their own client's tokens.
        "introspection_endpoint_auth_methods_supported": [*CLIENT_AUTH_METHODS, "Bearer"],
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": CAPABILITIES,
    }


def openid_configuration(settings: Settings) -> dict[str, Any]:
    urls = endpoints(settings)
    return {
        "issuer": settings.public_url,
        "authorization_endpoint": urls["authorization_endpoint"],
        "token_endpoint": urls["token_endpoint"],
        "jwks_uri": urls.get("jwks_uri"),
        "registration_endpoint": urls.get("registration_endpoint"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "name"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
    }


def security_extension(settings: Settings) -> dict[str, Any]:
    """CapabilityStatement.rest.security: SMART-on-FHIR and the oauth-uris extension."""
    urls = endpoints(settings)
    names = {
        "authorize": "authorization_endpoint",
        "token": "token_endpoint",
        "introspect": "introspection_endpoint",
        "revoke": "revocation_endpoint",
        "register": "registration_endpoint",
    }
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": short, "valueUri": urls[key]}
                    for short, key in names.items()
                    if key in urls
                ],
            }
        ],
    }
