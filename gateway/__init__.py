"""Image Share Gateway: patient-controlled sharing of medical images over FHIR and DICOMweb."""

__version__ = "0.1.0"
