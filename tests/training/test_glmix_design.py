"""Design vectors phi = [1, onehot(...)]: names, unknown values, basis version."""

from training.glmix.design import CategoricalBasis


def test_design_basis_names_unknown_values_and_version():
    basis = CategoricalBasis.from_vocabularies({"industry": ["finance", "software"], "seniority": ["entry", "mid"]})
    assert basis.names == ["intercept", "industry=finance", "industry=software", "seniority=entry", "seniority=mid"]
    phi = basis.design({"industry": ["software", "retail", None], "seniority": ["mid", "entry", "mid"]})
    assert phi.tolist() == [[1, 0, 1, 0, 1], [1, 0, 0, 1, 0], [1, 0, 0, 0, 1]]  # unknown / missing: no one-hot
    assert CategoricalBasis.from_names(basis.names) == basis
    assert CategoricalBasis.from_json(basis.to_json()).version == basis.version
    assert CategoricalBasis.from_vocabularies({"industry": ["finance"], "seniority": ["entry"]}).version != basis.version
