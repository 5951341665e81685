"""Real DICOM test files shipped in packages, listed from disk (never downloaded).

`pydicom.data.get_testdata_files` would try the network for files pydicom-data lacks; these
helpers only look at what the installed packages hold.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import data_store
import pydicom
from pydicom import dcmread

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA_FILES = Path(data_store.__file__).parent / "data"
# pydicom reads these without error, yet they end before the data they declare: the engine
# refuses them with these reasons (a half-written output would be worse).
TRUNCATED = {"MR_truncated.dcm": "truncated pixel data", "rtplan_truncated.dcm": "truncated header"}
REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def sample(name: str) -> Path:
    for folder in (PYDICOM_FILES, PYDICOM_DATA_FILES):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


@cache
def readable_instances() -> tuple[Path, ...]:
    """Every packaged file pydicom reads whole that is a storable instance (has its 4 UIDs)."""
    found = []
    for folder in (PYDICOM_FILES, PYDICOM_DATA_FILES):
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.suffix in (".json", ".txt", ".gz", ".icc", ".dump"):
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    ds = dcmread(path, force=True)
                    for _ in ds.iterall():
                        pass
            except Exception:  # noqa: BLE001  (not readable: not "what pydicom reads")
                continue
            if any("End of file" in str(w.message) for w in caught):
                continue  # truncated: pydicom reads a part of it only
            if all(str(ds.get(k, "") or "").strip() for k in REQUIRED_UIDS):
                found.append(path)
    return tuple(found)


def ct_series(folder: Path, count: int, *, series: int = 1, start: int = 0) -> list[Path]:
    """`count` CT slices cloned from CT_small into `series` series of one study."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(sample("CT_small.dcm"))
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1000"
    paths = []
    for index in range(start, start + count):
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.2000.{index % series}"
        ds.SeriesNumber = index % series + 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3000.{index}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        path = folder / f"slice-{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
