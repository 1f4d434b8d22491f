"""A day is not built while an earlier day's raw events sit in quarantine (its windows would leave them out)."""

from datetime import date

import pytest

from rankflow.config import Settings
from rankflow.errors import MissingInput
from rankflow.stages.features import _refuse_quarantined_earlier_days, build_features


def test_a_later_day_waits_for_a_quarantined_earlier_day(tmp_path):
    settings = Settings(data_dir=tmp_path)
    paths = settings.paths
    held = paths.quarantine("raw_events", date(2026, 1, 4)) / "partition"
    held.mkdir(parents=True)
    for day in (date(2026, 1, 3), date(2026, 1, 5)):
        paths.raw_partition("events", day).mkdir(parents=True)

    with pytest.raises(MissingInput, match=r"raw events of 2026-01-04 are in quarantine .* then build 2026-01-05"):
        build_features(settings, date(2026, 1, 5))  # refused before Spark starts
    assert not paths.features.exists()
    _refuse_quarantined_earlier_days(settings, date(2026, 1, 3))  # an earlier day does not depend on it
    _refuse_quarantined_earlier_days(settings, date(2026, 1, 4))  # the day itself: validate_raw says why

    paths.raw_partition("events", date(2026, 1, 4)).mkdir(parents=True)  # restored (the quarantine copy stays)
    _refuse_quarantined_earlier_days(settings, date(2026, 1, 5))


def test_validating_a_day_first_rolls_back_an_interrupted_ingest(tmp_path, monkeypatch):
    from rankflow.stages import features

    recovered = []
    monkeypatch.setattr(features, "recover_replacement", recovered.append)
    with pytest.raises(MissingInput, match="no raw events for 2026-01-05"):
        features.validate_raw(Settings(data_dir=tmp_path), date(2026, 1, 5))
    assert recovered == [tmp_path]
