"""The beyond family: ADOPT, CAME, Muon and Dion (records.py; builders.py; muon.py, dion.py, precision.py: the
registry's own Muon and Dion).
"""
