"""NoC@t, failures and mIoU@k on hand-made IoU sequences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.metrics.clicks import failed, miou_at_k, noc, pad_ious, summarize


def test_noc_first_click_reaching_threshold():
    ious = [0.5, 0.86, 0.88, 0.95]
    assert noc(ious, 0.85) == 2
    assert noc(ious, 0.90) == 4
    assert noc([0.92], 0.90) == 1
    assert noc([0.2, 0.85], 0.85) == 2  # reaching exactly the threshold counts


def test_noc_caps_and_failures():
    never = [0.1, 0.5, 0.8]
    assert noc(never, 0.85, max_clicks=20) == 20
    assert failed(never, 0.85)
    assert not failed([0.1, 0.9], 0.85)
    late = [0.1] * 25 + [0.99]  # beyond the cap: a failure
    assert noc(late, 0.85, max_clicks=20) == 20 and failed(late, 0.85, max_clicks=20)
    at_cap = [0.1] * 19 + [0.9]
    assert noc(at_cap, 0.85) == 20 and not failed(at_cap, 0.85)


def test_miou_at_k_pads_short_runs_with_last_iou():
    runs = [[0.2, 0.9], [0.4, 0.6, 0.8]]
    np.testing.assert_allclose(miou_at_k(runs, max_clicks=4), [0.3, 0.75, 0.85, 0.85])
    np.testing.assert_allclose(pad_ious([0.5, 0.7, 0.9], 2), [0.5, 0.7])


def test_summarize_keys_and_values():
    runs = [[0.5, 0.86, 0.91], [0.2, 0.3]]
    s = summarize(runs, max_clicks=3)
    assert s["n"] == 2
    assert s["noc@85"] == pytest.approx((2 + 3) / 2)
    assert s["noc@90"] == pytest.approx((3 + 3) / 2)
    assert s["fail@85"] == 1 and s["fail@90"] == 1
    assert s["miou@1"] == pytest.approx(0.35) and s["miou@3"] == pytest.approx((0.91 + 0.3) / 2)
    assert "miou@4" not in s


def test_invalid_inputs():
    with pytest.raises(ShapeError):
        noc([], 0.85)
    with pytest.raises(ConfigError):
        noc([1.2], 0.85)
    with pytest.raises(ConfigError, match="0.85"):
        noc([0.5], 85)
    with pytest.raises(ShapeError):
        miou_at_k([])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=25), st.floats(0.05, 1), st.floats(0.05, 1))
def test_noc_properties(ious, t1, t2):
    lo, hi = sorted((t1, t2))
    assert 1 <= noc(ious, lo) <= noc(ious, hi) <= 20
    if failed(ious, hi):
        assert noc(ious, hi) == 20
    else:
        k = noc(ious, hi)
        assert ious[k - 1] >= hi and all(v < hi for v in ious[: k - 1])
