"""FHIR R4 HTTP ingress for practice software and FHIR-speaking hospitals."""
