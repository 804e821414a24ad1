"""The six models behind one interface: see base.py and registry.py."""
