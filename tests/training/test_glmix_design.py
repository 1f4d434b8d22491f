"""Design vectors phi = [1, onehot(...)]: names, unknown values, basis version."""

import numpy as np
import pytest

from training.glmix.design import CategoricalBasis


def test_design_basis_names_unknown_values_and_version():
    basis = CategoricalBasis.from_vocabularies({"industry": ["finance", "software"], "seniority": ["entry", "mid"]})
    assert basis.names == ["intercept", "industry=finance", "industry=software", "seniority=entry", "seniority=mid"]
    phi = basis.design({"industry": ["software", "retail", None], "seniority": ["mid", "entry", "mid"]})
    assert phi.tolist() == [[1, 0, 1, 0, 1], [1, 0, 0, 1, 0], [1, 0, 0, 0, 1]]  # unknown / missing: no one-hot
    assert CategoricalBasis.from_names(basis.names) == basis
    mixed = CategoricalBasis.from_vocabularies({"industry": ["3", "nan", "software"]})  # not str: named as str(v)
    phi = mixed.design({"industry": np.array([np.str_("software"), 3, float("nan"), None, "nan", "x"], dtype=object)})
    assert phi.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    assert CategoricalBasis.from_json(basis.to_json()).version == basis.version
    assert CategoricalBasis.from_vocabularies({"industry": ["finance"], "seniority": ["entry"]}).version != basis.version


def test_an_intercept_only_basis_needs_and_takes_the_row_count():
    basis = CategoricalBasis.from_vocabularies({})
    assert basis.names == ["intercept"] and basis.dim == 1
    np.testing.assert_array_equal(basis.design({}, rows=3), np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="needs the number of rows"):
        basis.design({})
    two = CategoricalBasis.from_vocabularies({"industry": ["a", "b"]})
    with pytest.raises(ValueError, match="different lengths"):
        two.design({"industry": ["a", "b"]}, rows=3)
