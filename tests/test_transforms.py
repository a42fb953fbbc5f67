"""Every transform is an exact, invertible pixel permutation, and the sets have the paper's sizes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hrdv2.errors import ConfigError
from hrdv2.transforms import (Compose, Flip, Identity, Rot90, Shift, coordinate_map, flips, product, rotations,
                              shifts, validate_shifts)

atoms = st.one_of(
    st.just(Identity()),
    st.builds(Shift, st.integers(-6, 6), st.integers(-6, 6)),
    st.builds(Flip, st.sampled_from(["h", "v"])),
    st.builds(Rot90, st.integers(0, 3)),
)
transforms = st.one_of(atoms, st.lists(atoms, min_size=1, max_size=4).map(lambda ts: Compose(tuple(ts))))


@settings(max_examples=150, deadline=None)
@given(t=transforms, h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3))
def test_inverse_undoes_forward(t, h, w, c):
    x = torch.randn(2, c, h, w)
    y = t.forward(x)
    assert tuple(y.shape[-2:]) == t.output_size(h, w)
    assert torch.equal(t.inverse(y), x)
    assert torch.equal(t.forward(t.inverse(y)), y)


@settings(max_examples=80, deadline=None)
@given(t=transforms, h=st.integers(1, 8), w=st.integers(1, 8))
def test_coordinate_map_says_where_each_pixel_lands(t, h, w):
    x = torch.randn(1, 1, h, w)
    ty, tx = coordinate_map(t, h, w)
    assert torch.equal(t.forward(x)[0, 0][ty, tx], x[0, 0])


def test_shift_moves_content_by_dy_dx():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 1] = 1
    y = Shift(2, -1).forward(x)
    assert y[0, 0, 3, 0] == 1 and y.sum() == 1


def test_set_sizes_match_the_paper():
    assert len(shifts((1, 2), "moore")) == 17
    assert len(shifts((1, 2), "neumann")) == 9
    assert len(product(shifts((1, 2), "moore"), flips())) == 68
    assert len(product(flips(), rotations())) == 16
    names = [t.name for t in product(shifts((1,)), flips())]
    assert len(set(names)) == len(names)


def test_shift_of_half_patch_or_more_is_refused():
    validate_shifts(shifts((1, 6)), 14)
    with pytest.raises(ConfigError, match="half the patch size"):
        validate_shifts(shifts((7,)), 14)
    with pytest.raises(ConfigError, match="pattern"):
        shifts((1,), "hexagonal")
    with pytest.raises(ConfigError, match="positive"):
        shifts((0,))
