"""imaging-depot: the research-imaging secondary hosting of a hospital.

Receives pseudonymized copies of the studies a research project needs and serves them.
"""

__version__ = "0.1.0"
