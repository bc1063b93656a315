import os

import pytest

from minigpt import kernels


@pytest.mark.skipif(not os.environ.get("MINIGPT_REQUIRE_COMPILED"), reason="only where the install must have built it")
def test_compiled_backend_was_built_and_is_default():
    assert "c" in kernels.available_backends()
    assert kernels.get_backend().name == "c"
