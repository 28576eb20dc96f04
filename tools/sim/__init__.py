"""Stateful simulators of the external HTTP APIs (Graph + Entra here; TRAML and Lime CRM later).

Owns nothing by itself: ``httpbase`` is the shared server base (routes, one-write responses,
HTTP+TLS on one port, faults, latency, request log), ``tls`` the throwaway test CA, ``graph``
the Graph/Entra simulator and ``mime2graph`` the MIME -> Graph message converter. Development
and test tooling only; excluded from deployment.
"""
