"""Code systems and the lookup tables the DICOM -> FHIR mapping needs."""

from __future__ import annotations

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DICOM_UID = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

# DICOM coding scheme designators (PS3.16 section 8) -> FHIR code system URIs.
CODING_SCHEMES: dict[str, str] = {
    "DCM": DCM,
    "SCT": SNOMED,
    "SRT": "http://snomed.info/srt",
    "LN": LOINC,
    "RADLEX": "http://radlex.org",
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
}

# BodyPartExamined defined terms -> SNOMED CT, after PS3.16 Annex L and CID 4031.
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BLADDER": ("89837001", "Bladder"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "CLAVICLE": ("51299004", "Clavicle"),
    "COCCYX": ("64688005", "Coccyx"),
    "COLON": ("71854001", "Colon"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "EXTREMITY": ("66019005", "Extremity"),
    "FEMUR": ("71341001", "Femur"),
    "FOOT": ("56459004", "Foot"),
    "FOREARM": ("14975008", "Forearm"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "HUMERUS": ("85050009", "Humerus"),
    "JAW": ("661005", "Jaw region"),
    "KNEE": ("72696002", "Knee"),
    "LEG": ("30021000", "Lower leg"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "MEDIASTINUM": ("72410000", "Mediastinum"),
    "NECK": ("45048000", "Neck"),
    "PANCREAS": ("15776009", "Pancreas"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "RIB": ("113197003", "Rib"),
    "SACRUM": ("54735007", "Sacrum"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "STERNUM": ("56873002", "Sternum"),
    "STOMACH": ("69695003", "Stomach"),
    "THIGH": ("68367000", "Thigh"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
}

# Laterality and ImageLaterality enumerated values -> SNOMED CT (CID 244).
LATERALITY: dict[str, tuple[str, str]] = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}

GENDERS: dict[str, str] = {"M": "male", "F": "female", "O": "other"}
