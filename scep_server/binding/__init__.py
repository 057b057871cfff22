"""Devices, the binding of one client certificate to one device, and management attestation.

A client certificate becomes bound to a device at the device's first successful management
attestation and stays bound to it for the device's whole life. The device lifecycle (active,
suspended, deactivated, deleted) drives what the certificate is worth: see ``lifecycle``.
"""
