"""DICOMweb for researchers (STOW / QIDO / WADO under /projects/{p}/dicom-web) and its rules.

Only URL building (`urls`) lives here so far; the routers arrive with their issue. Keep this
file free of imports: the ingest service uses `urls` without loading FastAPI.
"""
