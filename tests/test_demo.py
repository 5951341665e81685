"""What `make serve` starts with: a demo project holding real, pseudonymized sample studies."""

from __future__ import annotations

from app.demo import DEMO_PROJECT, SAMPLE_FILES, ensure_demo, sample_paths
from app.ingest import Stores
from app.store import index_repo


def test_the_demo_project_is_filled_once_with_pseudonymized_samples(settings):
    assert len(sample_paths()) == len(SAMPLE_FILES)
    first = ensure_demo(settings)
    assert first is not None and not first.failures
    assert len(first.stored) == len(SAMPLE_FILES) and len(first.studies) >= 5
    stores = Stores.from_settings(settings)
    try:
        instances = index_repo.list_instances(stores.index, DEMO_PROJECT)
        assert len(instances) == len(SAMPLE_FILES)
        assert all(i.sop_uid.startswith("2.25.") for i in instances)
        assert all(stores.blobs.exists(i.blob_key) for i in instances)
    finally:
        stores.vault.close()
    assert ensure_demo(settings) is None  # a second start changes nothing


def test_the_demo_researcher_token_is_kept_private_and_reissued_when_revoked(settings):
    from app.auth.tokens import revoke_token, verify_token
    from app.demo import DEMO_TOKEN_FILE, demo_token
    from app.store.index import index_engine

    ensure_demo(settings)
    index = index_engine(settings.index_url)
    token = demo_token(settings)
    principal = verify_token(index, token)
    assert principal is not None
    assert (principal.project_id, principal.role) == (DEMO_PROJECT, "researcher")
    path = settings.resolved_data_dir / DEMO_TOKEN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert demo_token(settings) == token  # every start prints the same one
    revoke_token(index, DEMO_PROJECT, principal.token_id)
    fresh = demo_token(settings)
    assert fresh != token and verify_token(index, fresh) is not None
