"""Shared-record (DMP / Mon Espace Santé) outbound adapter, pure part: the IHE MHD
ITI-65 transaction (`mhd`), the consent gate and the reading of the record's answer.
The HTTP client that posts it lives elsewhere, so filing rules are testable offline.
"""
