"""DICOMweb for researchers (STOW / QIDO / WADO under /projects/{p}/dicom-web) and its rules.

The routers (ingest and research STOW, QIDO, WADO, delete) and the rules they share (Accept
negotiation, public base URL). Keep this file free of imports: the ingest service uses `urls`
without loading FastAPI.
"""
