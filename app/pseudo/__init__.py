"""Pseudonymization engine: turns identifiable DICOM into a project's pseudonymized copy.

Table-driven (PS3.15 Annex E, profiles in `mappings/`), keyed, deterministic; pixels pass through.
"""

import logging
import warnings

from pydicom import config as _pydicom_config

# pydicom's validation warnings quote the offending value (a name, a UID): on the ingest side
# that is identifiable data, and it must not reach a log or a terminal. Values are checked by
# the engine instead, which reports only attribute paths and reasons.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
_pydicom_config.settings.writing_validation_mode = _pydicom_config.IGNORE
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?")
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
