import pytest

from honed.core.errors import MissingExtraError, UnknownIdError, require_extra
from honed.core.registry import Registry


def test_registry_lookup_aliases_and_close_matches():
    reg = Registry("experiment")
    reg.register("16-smoothout")(object)
    reg.register("18-terngrad")(int)
    assert reg.get("16") is object and reg.get("terngrad") is int
    with pytest.raises(UnknownIdError, match="did you mean 16-smoothout"):
        reg.get("16-smothout")
    with pytest.raises(ValueError, match="twice"):
        reg.register("16-smoothout")(str)


def test_missing_extra_names_the_install():
    with pytest.raises(MissingExtraError, match=r"pip install 'honed\[he\]'"):
        require_extra("surely_not_a_module_xyz", "he")
