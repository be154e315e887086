"""ipvlan-reconciler: declarative Linux IPvlan networking.

Pipeline (one way): manifest -> observe -> plan -> apply -> verify.
"""
__version__ = "0.1.0"
