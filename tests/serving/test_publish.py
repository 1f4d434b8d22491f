"""Publish: build the Bento, smoke-test the built artifact (its own code, not the source tree), promote, roll back."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_build_smoke_test_promote_and_rollback_the_bento(private_settings):
    served_settings = private_settings  # promotion and rollback rewrite serving.json: a copy of the data dir
    from rankflow.stages import ranker
    from rankflow.stages.publish import BENTO_NAME, build_bento, promote_bento, rollback, smoke_test

    built = build_bento(served_settings)
    tag = built["bento_tag"]
    assert tag.startswith(f"{BENTO_NAME}:")
    assert (served_settings.paths.bentoml_home / "bentos" / BENTO_NAME / tag.split(":")[1] / "bento.yaml").exists()
    smoke = smoke_test(served_settings, tag)
    assert smoke["status"] == "passed" and 0 < smoke["top"]["score"] < 1
    assert promote_bento(served_settings, tag) == {"bento_tag": tag, "status": "serving", "previous": None}
    state = ranker.serving_state(served_settings)
    assert state[BENTO_NAME]["tag"] == tag and state[BENTO_NAME]["history"] == []
    # a second promotion keeps the first for rollback; rollback restores it (the ranker needs a history too)
    assert promote_bento(served_settings, "rankflow-ranking:second")["previous"] == tag
    ranker_tag = ranker.serving_tag(served_settings)
    ranker._write_serving(served_settings, ranker.MODEL_NAME, ranker_tag, [ranker_tag])
    result = rollback(served_settings)
    assert result["bento"] == {"bento_tag": tag, "rolled_back": "rankflow-ranking:second"}
    assert ranker.serving_state(served_settings)[BENTO_NAME]["tag"] == tag
    assert ranker.serving_tag(served_settings) == ranker_tag
